#!/usr/bin/env bash
# Run COMMAND as root inside a Debian guest kernel under QEMU that has real
# kernel RDMA verbs: SoftRoCE (rdma_rxe) devices rxe0 and rxe1, ACTIVE, on the
# two ends of a veth pair that really talk to each other.
#
#   scripts/rdma-vm.sh 'COMMAND'        exits with COMMAND's status
#
# The guest sees the host's / read-only with a writable tmpfs overlay on top
# (host-built binaries run unchanged), starts in the caller's working
# directory, and has no network device (-nic none): its only links are lo and
# the veth pair it creates itself, whose addresses exist only inside it.
# Files written under $TE_VM_OUT (a host folder shared read-write) survive the
# guest; everything else it writes is gone at power-off.
#
# Env:
#   TE_VM_TIMEOUT  whole-VM limit in seconds (default 1800); on expiry the
#                  guest is killed and the script exits 124.
#   TE_VM_OUT      host folder shared into the guest at the same path
#                  (default: a fresh folder under /tmp); the console log is
#                  kept there as console.log.
#   TE_VM_CACHE    where the guest kernel is unpacked (default /var/cache/te-rs-vm).
#   TE_VM_MEM      guest memory in MiB (default 4096).
# Inside the guest: TE_VM=1, TE_VM_OUT, RXE_ADDR0/RXE_ADDR1 (the IPv4
# addresses of rxe0/veth0 and rxe1/veth1), RXE_NETDEV0/RXE_NETDEV1, and the
# command rxe-routes, which restores the routes after a link was set down
# and up again.
# Rails: four more devices rxe2..rxe5 on veths vr2..vr5 whose other ends
# (vb2..vb5) are ports of one bridge br0, so every rail device reaches every
# other one and taking vrN down takes only rxeN down (RXE_RAIL_DEVS,
# RXE_RAIL_NETDEVS, RXE_RAIL_ADDRS, space-separated, in that order).
#
# Facts and pitfalls: ../shared/reference/softroce-vm.md (boots are slow under
# emulation: batch many checks into one COMMAND).
set -euo pipefail

[[ $# -ge 1 && -n "$1" ]] || { echo "usage: $0 'COMMAND'" >&2; exit 2; }
CMD="$1"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TIMEOUT="${TE_VM_TIMEOUT:-1800}"
CACHE="${TE_VM_CACHE:-/var/cache/te-rs-vm}"
MEM="${TE_VM_MEM:-4096}"
OUT="${TE_VM_OUT:-$(mktemp -d /tmp/te-rs-vm.XXXXXX)}"
mkdir -p "$OUT" "$CACHE"
OUT="$(cd "$OUT" && pwd)"

log() { echo "rdma-vm: $*" >&2; }
die() { log "$*"; exit 1; }
[[ $(id -u) == 0 ]] || die "must run as root (apt, 9p sharing of /)"

# --- 1. host packages ---------------------------------------------------------
pkgs="qemu-system-x86 busybox-static kmod rdma-core ibverbs-utils ibverbs-providers perftest rdmacm-utils iproute2 cpio xz-utils zstd"
need=()
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
if [[ ${#need[@]} -gt 0 ]]; then
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi

# --- 2. guest kernel: discovered, downloaded, unpacked (never installed) -----
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [[ -z "$kpkg" ]]; then
    apt-get update -qq
    kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
[[ -n "$kpkg" ]] || die "cannot discover the kernel package behind linux-image-amd64"
KVER="${kpkg#linux-image-}"
KDIR="$CACHE/$KVER"
if [[ ! -f "$KDIR/.unpacked" ]]; then
    log "fetching guest kernel $kpkg"
    rm -rf "$KDIR"; mkdir -p "$KDIR/deb"
    (cd "$KDIR/deb" && apt-get download "$kpkg" >/dev/null) || die "apt-get download $kpkg failed"
    dpkg -x "$KDIR"/deb/*.deb "$KDIR/root"
    depmod -b "$KDIR/root" "$KVER"
    touch "$KDIR/.unpacked"
fi
VMLINUZ="$KDIR/root/boot/vmlinuz-$KVER"
[[ -f "$VMLINUZ" ]] || die "no kernel image at $VMLINUZ"

# --- 3. initramfs: static busybox, the modules in dependency order, /init ----
WORK=$(mktemp -d /tmp/te-rs-vm-initrd.XXXXXX)
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
IR="$WORK/root"
mkdir -p "$IR"/{bin,dev,proc,sys,lower,upper,newroot,modules}
cp /bin/busybox "$IR/bin/busybox"
for a in sh mount umount mkdir insmod poweroff sleep cat echo chroot ln ls; do
    ln -s busybox "$IR/bin/$a"
done
mods="virtio_pci 9pnet_virtio 9p overlay veth bridge crc32_generic crc32-pclmul rdma_rxe ib_uverbs rdma_ucm"
: >"$IR/modules/order"
for m in $mods; do
    modprobe -d "$KDIR/root" -S "$KVER" --show-depends "$m" 2>/dev/null | awk '$1=="insmod" {print $2}'
done | awk '!seen[$0]++' | while read -r ko; do
    base=$(basename "$ko")
    case "$base" in
        *.ko.xz) xz -dc "$ko" >"$IR/modules/${base%.xz}"; base=${base%.xz} ;;
        *.ko.zst) zstd -qdc "$ko" >"$IR/modules/${base%.zst}"; base=${base%.zst} ;;
        *) cp "$ko" "$IR/modules/$base" ;;
    esac
    echo "$base" >>"$IR/modules/order"
done
grep -q '^rdma_rxe' "$IR/modules/order" || die "rdma_rxe not found in $kpkg"

cat >"$IR/init" <<'INIT'
#!/bin/sh
# Guest PID 1: modules, host root (9p) + tmpfs overlay, the command, power-off.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules/order); do insmod /modules/$m 2>/dev/null; done
mount -t 9p -o trans=virtio,version=9p2000.L,cache=loose,msize=262144,ro hostroot /lower || { echo "VM: cannot mount host root"; poweroff -f; }
mount -t tmpfs -o size=75% tmpfs /upper
mkdir -p /upper/data /upper/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work /newroot || { echo "VM: overlay failed"; poweroff -f; }
OUT=$(sed -n 's/.*te_vm_out=\([^ ]*\).*/\1/p' /proc/cmdline)
mkdir -p /newroot$OUT
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 results /newroot$OUT || { echo "VM: cannot mount results"; poweroff -f; }
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
chroot /newroot /bin/bash $OUT/.guest.sh
echo "VM: command finished, powering off"
poweroff -f
INIT
chmod +x "$IR/init"
(cd "$IR" && find . | cpio -o -H newc --quiet | gzip -1) >"$WORK/initrd.gz"

# --- 4. what runs in the guest (inside the chroot of the host's root) --------
printf '%s\n' "$CMD" >"$OUT/.command"
cat >"$OUT/.guest.sh" <<GUEST
#!/bin/bash
# Runs inside the guest's chroot. Network: a veth pair with one rxe device on
# each end, routed so that traffic between the two local addresses really
# crosses the pair (softroce-vm.md, pitfall 1).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TE_VM=1 TE_VM_OUT=$OUT
export RXE_ADDR0=169.254.77.1 RXE_ADDR1=169.254.77.2 RXE_NETDEV0=veth0 RXE_NETDEV1=veth1
export RXE_RAIL_DEVS="rxe2 rxe3 rxe4 rxe5" RXE_RAIL_NETDEVS="vr2 vr3 vr4 vr5"
export RXE_RAIL_ADDRS="169.254.78.2 169.254.78.3 169.254.78.4 169.254.78.5"
status=$OUT/.status
echo 255 >\$status
# Neighbours and per-direction routes die with a link that goes down:
# rxe-routes (on PATH in the guest) puts them back after 'ip link set up'.
mkdir -p /usr/local/sbin
cat >/usr/local/sbin/rxe-routes <<'ROUTES'
#!/bin/bash
# One 'ip' process for every entry: a guest busy with a workload spawns
# processes slowly.
{
read mac0 </sys/class/net/veth0/address; read mac1 </sys/class/net/veth1/address
echo "neigh replace \$RXE_ADDR1 lladdr \$mac1 dev veth0 nud permanent"
echo "neigh replace \$RXE_ADDR0 lladdr \$mac0 dev veth1 nud permanent"
echo "route replace table 101 \$RXE_ADDR0 dev veth1 src \$RXE_ADDR1"
echo "route replace table 102 \$RXE_ADDR1 dev veth0 src \$RXE_ADDR0"
# Rails on br0: from each rail address, every other one leaves by its own veth.
for i in 2 3 4 5; do
    [ -e /sys/class/net/vr\$i ] || continue
    for j in 2 3 4 5; do
        [ \$i = \$j ] && continue
        read mac </sys/class/net/vr\$j/address
        echo "neigh replace 169.254.78.\$j lladdr \$mac dev vr\$i nud permanent"
        echo "route replace table 1\$i\$i 169.254.78.\$j dev vr\$i src 169.254.78.\$i"
    done
done
} | ip -force -batch -
ROUTES
chmod +x /usr/local/sbin/rxe-routes
setup() {
    ip link set lo up
    ip link add veth0 type veth peer name veth1 || return 1
    ip addr add \$RXE_ADDR0/24 dev veth0
    ip addr add \$RXE_ADDR1/24 dev veth1
    ip link set veth0 up && ip link set veth1 up
    for i in all default veth0 veth1; do
        echo 1 >/proc/sys/net/ipv4/conf/\$i/accept_local
        echo 0 >/proc/sys/net/ipv4/conf/\$i/rp_filter
    done
    rxe-routes || return 1
    ip rule add pref 10 iif lo from \$RXE_ADDR1 to \$RXE_ADDR0 lookup 101
    ip rule add pref 10 iif lo from \$RXE_ADDR0 to \$RXE_ADDR1 lookup 102
    ip rule add pref 1000 lookup local
    ip rule del pref 0 lookup local
    rdma link add rxe0 type rxe netdev veth0 || return 1
    rdma link add rxe1 type rxe netdev veth1 || return 1
    ip link add br0 type bridge || return 1
    ip link set br0 up
    for i in 2 3 4 5; do
        ip link add vr\$i type veth peer name vb\$i || return 1
        ip link set vb\$i master br0
        ip addr add 169.254.78.\$i/24 dev vr\$i
        ip link set vb\$i up && ip link set vr\$i up
        echo 1 >/proc/sys/net/ipv4/conf/vr\$i/accept_local
        echo 0 >/proc/sys/net/ipv4/conf/vr\$i/rp_filter
        ip rule add pref 11 iif lo from 169.254.78.\$i lookup 1\$i\$i
        rdma link add rxe\$i type rxe netdev vr\$i || return 1
    done
    rxe-routes || return 1
    for t in \$(seq 1 100); do
        n=\$(rdma link show 2>/dev/null | grep -c 'state ACTIVE')
        [ "\$n" -ge 6 ] && return 0
        sleep 0.1
    done
    rdma link show
    return 1
}
if ! setup; then
    echo "VM: rxe set-up failed"
    echo 254 >\$status
    exit 0
fi
rdma link show
ulimit -l unlimited
ulimit -n 65536
cd "$(pwd)" 2>/dev/null || cd /
echo "VM: running command"
set +e
bash -c "\$(cat $OUT/.command)"
echo \$? >\$status
GUEST

# --- 5. boot ----------------------------------------------------------------
rm -f "$OUT/.status"
CONSOLE="$OUT/console.log"
log "booting $KVER (timeout ${TIMEOUT}s, console $CONSOLE)"
set +e
timeout --kill-after=10 "$TIMEOUT" qemu-system-x86_64 \
    -accel tcg,thread=multi -cpu max -smp 2 -m "$MEM" \
    -nic none -display none -no-reboot -serial stdio -monitor none \
    -kernel "$VMLINUZ" -initrd "$WORK/initrd.gz" \
    -append "console=ttyS0 panic=-1 quiet loglevel=3 te_vm_out=$OUT" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -virtfs "local,path=$OUT,mount_tag=results,security_model=none" \
    </dev/null 2>&1 | tee "$CONSOLE"
qrc=${PIPESTATUS[0]}
set -e
if [[ $qrc -eq 124 || $qrc -eq 137 ]]; then
    log "guest timed out after ${TIMEOUT}s"
    exit 124
fi
[[ -f "$OUT/.status" ]] || die "guest ended without a status (qemu rc $qrc); see $CONSOLE"
rc=$(cat "$OUT/.status")
case "$rc" in
    255) die "guest command did not finish; see $CONSOLE" ;;
    254) die "rxe set-up failed in the guest; see $CONSOLE" ;;
esac
exit "$rc"
