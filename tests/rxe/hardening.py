"""Issue 10 on real kernel verbs (SoftRoCE): settings above the device's
limits are clamped and logged instead of failing every endpoint; MRs split
at MC_MAX_MR_SIZE; a lowered netdev MTU and a GID change (address removed and
re-added) leave transfers working. Picked up by suite.py (CHECKS)."""

import re
import subprocess
import time

from run_interop import MiB, Peer, PeerError
from suite import ADDR, NETDEV, log_text, side


def _write_read_verified(ini, tgt, size, seed):
    """`size` bytes written initiator→target and read back, both verified."""
    tb = tgt.must(op="alloc", size=size)["addr"]
    src = ini.must(op="alloc", size=size)["addr"]
    back = ini.must(op="alloc", size=size)["addr"]
    ini.must(op="fill", addr=src, len=size, seed=seed)
    ini.must(120.0, op="xfer", dir="write", segment=tgt.name, reqs=[[src, tb, size]])
    tgt.must(op="check", addr=tb, len=size, seed=seed)
    ini.must(120.0, op="xfer", dir="read", segment=tgt.name, reqs=[[back, tb, size]])
    ini.must(op="check", addr=back, len=size, seed=seed)


# rxe: max_cqe 32767, max_sge 32, inline at most 512 bytes. MC_MAX_WR at its
# largest value must connect whether or not the device lowers it.
LIMIT_ENV = {"MC_MAX_CQE_PER_CTX": "65535", "MC_MAX_SGE": "64", "MC_MAX_INLINE": "4096",
             "MC_MAX_MR_SIZE": "1000000", "MC_MAX_WR": "65535"}
LIMIT_LINES = ["MC_MAX_CQE_PER_CTX=65535 lowered to 32767", "MC_MAX_SGE=64 lowered to 32",
               "MC_MAX_INLINE=4096 lowered to", "splitting registration"]


def limits_clamped(res, logdir):
    def run():
        tgt = Peer("te-rs", "target", logdir, "limits", **side(0, LIMIT_ENV))
        ini = Peer("te-rs", "initiator", logdir, "limits", **side(1, LIMIT_ENV))
        try:
            _write_read_verified(ini, tgt, 4 * MiB, 31)
        finally:
            ini.kill()
            tgt.kill()
        for peer in (tgt, ini):
            text = log_text(peer)
            missing = [l for l in LIMIT_LINES if l not in text]
            if missing:
                raise PeerError("%s log lacks %r (%s)" % (peer.role, missing, peer.log_path))
        m = re.search(r"MC_MAX_INLINE=4096 lowered to (\d+)", log_text(ini))
        w = re.search(r"MC_MAX_WR=65535 lowered to (\d+)", log_text(ini))
        return ("4 MiB in 1 MB MRs written+read, verified; inline lowered to %s, MC_MAX_WR %s"
                % (m.group(1), w.group(1) if w else "65535 kept"))
    res.run("[limits] CQE/SGE/inline above rxe's: clamped, logged, transfers", run)


def _set_mtu(mtu):
    for dev in NETDEV:
        subprocess.run(["ip", "link", "set", dev, "mtu", str(mtu)], check=True)
    subprocess.run(["rxe-routes"], check=True)


def mtu_lowered(res, logdir):
    """Netdevs at 1000 bytes (rxe's active MTU drops to 512) and an invalid
    MC_MTU: path MTU follows the port, transfers verify."""
    def run():
        _set_mtu(1000)
        try:
            time.sleep(1.0)
            env = {"MC_MTU": "1500"}
            tgt = Peer("te-rs", "target", logdir, "mtu", **side(0, env))
            ini = Peer("te-rs", "initiator", logdir, "mtu", **side(1, env))
            try:
                _write_read_verified(ini, tgt, 2 * MiB, 41)
            finally:
                ini.kill()
                tgt.kill()
        finally:
            _set_mtu(1500)
        text = log_text(ini)
        if "MC_MTU=1500 is not an IB MTU" not in text:
            raise PeerError("no warning for MC_MTU=1500 (%s)" % ini.log_path)
        m = re.search(r"RDMA device rxe1 port 1: .* MTU (\d+)", text)
        if not m or int(m.group(1)) >= 1024:
            raise PeerError("port MTU not lowered by the netdev: %s" % (m and m.group(0)))
        return "active MTU %s, 2 MiB written+read, verified" % m.group(1)
    res.run("[mtu] netdev MTU 1000 and MC_MTU=1500: transfers verify", run)


def gid_changed(res, logdir):
    """The target's address removed and re-added while its engine runs (rxe
    drops and re-creates the GID entries): a new initiator connects and
    transfers to the same target engine."""
    def run():
        tgt = Peer("te-rs", "target", logdir, "gid", **side(0))
        ini = Peer("te-rs", "initiator", logdir, "gid", **side(1))
        try:
            _write_read_verified(ini, tgt, MiB, 51)
            ini.kill()
            cidr = subprocess.run(["ip", "-o", "-4", "addr", "show", "dev", NETDEV[0]],
                                  capture_output=True, text=True, check=True).stdout.split()
            cidr = cidr[cidr.index("inet") + 1]
            subprocess.run(["ip", "addr", "del", cidr, "dev", NETDEV[0]], check=True)
            time.sleep(1.0)
            subprocess.run(["ip", "addr", "add", cidr, "dev", NETDEV[0]], check=True)
            subprocess.run(["rxe-routes"], check=True)
            time.sleep(1.0)
            ini = Peer("te-rs", "initiator", logdir, "gid2", **side(1))
            _write_read_verified(ini, tgt, MiB, 52)
        finally:
            ini.kill()
            tgt.kill()
        text = log_text(tgt)
        if "replaces GID" not in text:
            raise PeerError("target never re-read its GID (%s)" % tgt.log_path)
        how = ("RTR retried with a re-probed GID" if "retrying with GID" in text
               else "GID re-read on GID_CHANGE")
        return "new initiator after the GID change (%s): 1 MiB written+read, verified" % how
    res.run("[gid] address removed and re-added: new connections work", run)


CHECKS = {
    "limits": limits_clamped,
    "mtu": mtu_lowered,
    "gid": gid_changed,
}
