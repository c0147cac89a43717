"""Multi-process RDMA checks on real kernel verbs (SoftRoCE), run inside the
guest of scripts/rdma-vm.sh by scripts/rxe-suite.sh.

Every engine runs in its own process (tests/interop/peer.py): te-rs through
its C ABI (ctypes), the C++ engine through its Python module from the PyPI
wheel. Devices: rxe0 on veth0 ($RXE_ADDR0) and rxe1 on veth1 ($RXE_ADDR1).
Prints one PASS/FAIL line per check and "N passed, N failed".

Usage: suite.py [--only NAME,...] [--repeat N] [--logdir D]
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "interop"))
sys.path.insert(0, HERE)
import run_interop as ri  # noqa: E402
from run_interop import KiB, MiB, Peer, PeerError, Results  # noqa: E402

ADDR = [os.environ.get("RXE_ADDR0", "169.254.77.1"), os.environ.get("RXE_ADDR1", "169.254.77.2")]
NETDEV = [os.environ.get("RXE_NETDEV0", "veth0"), os.environ.get("RXE_NETDEV1", "veth1")]
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
TE_BENCH = os.environ.get("TE_BENCH", os.path.join(REPO, "target", "release", "te-bench"))

# A peer killed with tasks in flight: every task of the survivor is terminal
# within this many seconds of the kill (README "RDMA on real verbs").
KILL_BOUND_S = 5.0
# A netdev down under load: every task terminal within this bound.
LINK_DOWN_BOUND_S = 20.0


def rdma_env(dev, extra=None):
    env = {"PEER_PROTOCOL": "rdma", "PEER_DEVICES": dev, "MC_LOG_LEVEL": "INFO",
           "MC_TCP_BIND_ADDRESS": ""}
    env.update(extra or {})
    return env


def side(dev_index, extra=None):
    return {"local_name": ADDR[dev_index], "env": rdma_env("rxe%d" % dev_index, extra)}


def log_text(peer):
    with open(peer.log_path, errors="replace") as f:
        return f.read()


def counters(dev):
    """rxe's hardware counters of port 1 (sysfs)."""
    d = "/sys/class/infiniband/%s/ports/1/hw_counters" % dev
    out = {}
    for name in os.listdir(d):
        try:
            with open(os.path.join(d, name)) as f:
                out[name] = int(f.read().strip())
        except (OSError, ValueError):
            pass
    return out


# --- te-rs <-> te-rs and te-rs <-> C++ data checks ---------------------------

def data_pairs(res, logdir, pairs):
    for ikind, tkind, idev, tdev in pairs:
        tag = "rdma %s/rxe%d->%s/rxe%d" % (ikind, idev, tkind, tdev)
        ri._pair_checks(res, ikind, tkind, logdir, tag.replace(" ", "_").replace("/", "-"),
                        "P2PHANDSHAKE", ri.SIZES, tgt_kw=side(tdev), ini_kw=side(idev),
                        rdma=True)


def ready_ack_logged(res, logdir):
    """The ready ACK travels both ways between te-rs and the C++ engine."""
    for ikind, tkind in (("te-rs", "mooncake"), ("mooncake", "te-rs")):
        tag = "ack-%s-%s" % (ikind, tkind)

        def check(ikind=ikind, tkind=tkind, tag=tag):
            tgt = Peer(tkind, "target", logdir, tag, local_name=ADDR[0], env=rdma_env("rxe0"))
            ini = Peer(ikind, "initiator", logdir, tag, local_name=ADDR[1], env=rdma_env("rxe1"))
            try:
                tb = tgt.must(op="alloc", size=MiB)["addr"]
                src = ini.must(op="alloc", size=MiB)["addr"]
                ini.must(op="fill", addr=src, len=MiB, seed=7)
                ini.must(60.0, op="xfer", dir="write", segment=tgt.name, reqs=[[src, tb, MiB]])
                tgt.must(op="check", addr=tb, len=MiB, seed=7)
            finally:
                ini.kill()
                tgt.kill()
            tlog, ilog = log_text(tgt), log_text(ini)
            # Passive (target) side received the ACK the active side sent.
            if tkind == "mooncake":
                if "Received RDMA ready ACK" not in tlog:
                    raise PeerError("C++ target never logged 'Received RDMA ready ACK' (%s)"
                                    % tgt.log_path)
                if "sent RDMA ready ACK" not in ilog:
                    raise PeerError("te-rs initiator did not log sending the ACK")
            else:
                if "received RDMA ready ACK" not in tlog:
                    raise PeerError("te-rs target never logged 'received RDMA ready ACK' (%s)"
                                    % tgt.log_path)
            return "ACK seen by the %s target" % tkind
        res.run("[%s->%s] ready ACK sent and received over rxe" % (ikind, tkind), check)


def ready_ack_gate(res, logdir):
    """The active side's RTR is held back 3 s while both sides have writes
    queued for each other.
    - Gate on: the passive side posts nothing before the ACK, so its NIC never
      retransmits (rxe0's completer_retry_err stays put); every byte arrives.
    - Legacy (no ACK on either side), retry_cnt 7 (upstream's): the passive
      side posts to a QP that is not ready, and rxe retransmits until it is
      (rxe never counts 7 down); nothing is lost.
    - Legacy, MC_IB_RETRY_CNT=6: the delay outlasts 7 transmissions, rxe ends
      the WR with retry-exceeded (retry_exceeded_err grows): the WR is lost,
      the verdict the soft fabric gives for a delay beyond the retry budget
      (tests/rdma_ready_ack.rs); the tasks still end."""
    cases = [("gated: passive posts nothing before the ACK", False, None),
             ("legacy: passive posts early, rxe retransmits, nothing lost", True, None),
             ("legacy, retry_cnt 6: the early WR is lost (retry exceeded)", True, "6")]
    for label, legacy, retry in cases:
        def run(legacy=legacy, retry=retry):
            extra = {"MC_TE_RS_LEGACY_HANDSHAKE": "1"} if legacy else {}
            if retry:
                extra["MC_IB_RETRY_CNT"] = retry
            tag = "gate-legacy%s" % (retry or "") if legacy else "gate"
            tgt = Peer("te-rs", "target", logdir, tag, **side(0, extra))
            ini = Peer("te-rs", "initiator", logdir, tag,
                       **side(1, dict(extra, MC_TE_RS_TEST_RTR_DELAY_MS="3000")))
            try:
                n = 16 * 64 * KiB
                tb = tgt.must(op="alloc", size=n)["addr"]
                ib = ini.must(op="alloc", size=n)["addr"]
                tgt.must(op="fill", addr=tb, len=n // 2, seed=11)
                ini.must(op="fill", addr=ib + n // 2, len=n // 2, seed=12)
                c0 = counters("rxe0")
                blk = 64 * KiB
                half = n // 2
                # Active: the initiator writes its upper half to the target.
                ini.must(op="submit", dir="write", segment=tgt.name,
                         reqs=[[ib + half + i * blk, tb + half + i * blk, blk]
                               for i in range(half // blk)])
                time.sleep(1.5)  # the target's endpoint now waits for the ACK
                # Passive: the target writes its lower half to the initiator.
                tgt.must(op="submit", dir="write", segment=ini.name,
                         reqs=[[tb + i * blk, ib + i * blk, blk] for i in range(half // blk)])
                fins = [wait_terminal(p, half // blk, 60.0, w)[1]
                        for p, w in ((ini, "initiator"), (tgt, "target"))]
                c1 = counters("rxe0")
                retrans = c1.get("completer_retry_err", 0) - c0.get("completer_retry_err", 0)
                exceeded = c1.get("retry_exceeded_err", 0) - c0.get("retry_exceeded_err", 0)
                if retry is None:
                    for fin, what in zip(fins, ("initiator", "target")):
                        if fin.get("COMPLETED", 0) != half // blk:
                            raise PeerError("%s: %r" % (what, fin))
                    tgt.must(op="check", addr=tb + half, len=half, seed=12)
                    ini.must(op="check", addr=ib, len=half, seed=11)
            finally:
                ini.kill()
                tgt.kill()
            if not legacy and retrans != 0:
                raise PeerError("gated passive side retransmitted %d times: it posted "
                                "before the peer's QPs were ready" % retrans)
            if legacy and retrans == 0:
                raise PeerError("legacy passive side never retransmitted: the race "
                                "was not opened (timing?)")
            if retry and exceeded == 0:
                raise PeerError("retry_cnt %s: no retry-exceeded completion after %d "
                                "retransmissions" % (retry, retrans))
            if not retry and exceeded != 0:
                raise PeerError("%d WRs ended retry-exceeded" % exceeded)
            return "passive-side retransmissions %d, retry-exceeded %d, targets %r" % (
                retrans, exceeded, fins)
        res.run("[ready-ACK, RTR delayed 3s] %s" % label, run)


# --- te-bench --check between two processes ----------------------------------

def dmesg_warnings():
    """Kernel WARNING lines so far (rxe's completer warns once per boot when
    it ends a WR in error with status success)."""
    try:
        out = subprocess.run(["dmesg"], stdout=subprocess.PIPE, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [l for l in out.splitlines() if "WARNING" in l]


def set_backlog(value):
    """net.core.netdev_max_backlog; returns the value it had."""
    path = "/proc/sys/net/core/netdev_max_backlog"
    with open(path) as f:
        old = f.read().strip()
    with open(path, "w") as f:
        f.write(str(value))
    return old


def bench_two_processes(res, logdir, lossy=False):
    """te-bench --check, target on rxe0 and initiator on rxe1: every byte of
    every batch verified, run once (no retry). `lossy`: the guest drops
    packets (netdev_max_backlog 16), which makes rxe retry READ responses
    and, on kernel 6.1, end some READs with no bytes and no error."""
    attempt = [0]
    for op in ("write", "read"):
        def run(op=op):
            attempt[0] += 1
            tag = "bench-%s%s-%d" % ("lossy-" if lossy else "", op, attempt[0])
            tlog = open(os.path.join(logdir, tag + ".target.log"), "w")
            ilog_path = os.path.join(logdir, tag + ".initiator.log")
            # DEBUG on both sides: a failure leaves the endpoints' story.
            env = dict(os.environ, MC_LOG_LEVEL="DEBUG")
            before = {d: counters(d) for d in ("rxe0", "rxe1")}
            warned_before = set(dmesg_warnings())
            tgt = subprocess.Popen([TE_BENCH, "--mode=target", "--protocol=rdma",
                                    "--device_name=rxe0", "--local_server_name=" + ADDR[0],
                                    "--buffer_size=%d" % (64 * MiB), "--duration=300",
                                    "--check"],
                                   stdout=subprocess.PIPE, stderr=tlog, env=env, text=True)
            try:
                seg = None
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and seg is None:
                    line = tgt.stdout.readline()
                    if not line:
                        break
                    m = re.search(r"segment (\S+)", line)
                    seg = m.group(1) if m else None
                if seg is None:
                    raise PeerError("te-bench target printed no segment name")
                with open(ilog_path, "w") as ilog:
                    out = subprocess.run([TE_BENCH, "--mode=initiator", "--protocol=rdma",
                                          "--device_name=rxe1", "--local_server_name=" + ADDR[1],
                                          "--segment_id=" + seg, "--operation=" + op,
                                          "--block_size=65536", "--batch_size=16", "--threads=2",
                                          "--duration=3", "--buffer_size=%d" % (64 * MiB),
                                          "--check", "--no_baseline"],
                                         stdout=subprocess.PIPE, stderr=ilog, text=True,
                                         timeout=120, env=env)
                warned = [w for w in dmesg_warnings() if w not in warned_before]
                if out.returncode != 0:
                    moved = {d: {k: v - before[d].get(k, 0) for k, v in counters(d).items()
                                 if v != before[d].get(k, 0)} for d in before}
                    with open(ilog_path, errors="replace") as f:
                        errs = [l for l in f if l[:1] in ("E", "W")]
                    raise PeerError("initiator rc=%d (log %s; counters moved %s): %s | %s" % (
                        out.returncode, ilog_path, moved, "".join(errs[:3])[-300:],
                        out.stdout[-200:]))
                moved = {d: {k: v - before[d].get(k, 0) for k, v in counters(d).items()
                             if k in ("retry_exceeded_err", "completer_retry_err", "rcvd_seq_err",
                                      "duplicate_request", "out_of_seq_request")
                             and v != before[d].get(k, 0)} for d in before}
                return "%s | rxe %s%s" % (out.stdout.strip().splitlines()[-1][:70], moved,
                                         " | kernel WARNING" if warned else "")
            finally:
                tgt.kill()
                tgt.wait()
                tlog.close()
        def run_lossy(run=run):
            old = set_backlog(16)
            try:
                return run()
            finally:
                set_backlog(old)
        label = "[te-bench] %s --check%s, target rxe0, initiator rxe1" % (
            op, " with packet loss" if lossy else "")
        res.run(label, run_lossy if lossy else run)


# --- faults -----------------------------------------------------------------

def wait_terminal(ini, total, bound, what):
    """Poll the initiator until all `total` tasks are terminal; returns the
    seconds it took and the final counts."""
    t0 = time.monotonic()
    last = {}
    while time.monotonic() - t0 < bound:
        last = ini.must(op="poll")["counts"]
        if last["open_batches"] == 0:
            done = sum(last["finished"].values())
            if done != total:
                raise PeerError("%s: %d tasks ended, %d submitted" % (what, done, total))
            return time.monotonic() - t0, last["finished"]
        time.sleep(0.1)
    raise PeerError("%s: %d tasks, still not all terminal %.0fs later: %r"
                    % (what, total, bound, last))


def peer_killed(res, logdir):
    """A target SIGKILLed with 64 KiB WRITEs in flight, more submitted after."""
    def run():
        tgt = Peer("te-rs", "target", logdir, "kill", **side(0))
        ini = Peer("te-rs", "initiator", logdir, "kill", **side(1))
        try:
            tpid = tgt.must(op="pid")["pid"]
            tb = tgt.must(op="alloc", size=64 * MiB)["addr"]
            src = ini.must(op="alloc", size=64 * MiB)["addr"]
            # Warm: the endpoint is connected before the kill.
            ini.must(60.0, op="xfer", dir="write", segment=tgt.name, reqs=[[src, tb, 4096]])
            ini.must(op="poll")
            blk, per_batch, batches = 64 * KiB, 128, 64  # 8,192 x 64 KiB
            reqs = [[src + i * blk, tb + i * blk, blk] for i in range(per_batch)]
            for _ in range(batches // 2):
                ini.must(op="submit", dir="write", segment=tgt.name, reqs=reqs)
            os.kill(tpid, signal.SIGKILL)
            t_kill = time.monotonic()
            for _ in range(batches // 2):
                ini.must(op="submit", dir="write", segment=tgt.name, reqs=reqs)
            total = batches * per_batch
            _, counts = wait_terminal(ini, total, KILL_BOUND_S, "peer killed")
            took = time.monotonic() - t_kill
            return "%d tasks terminal %.1fs after the kill (%s)" % (total, took, counts)
        finally:
            ini.kill()
            try:
                tgt.kill()
            except Exception:
                pass
    res.run("[fault] target killed mid-transfer: every task ends within %.0fs" % KILL_BOUND_S, run)


def port_states():
    out = []
    for dev in ("rxe0", "rxe1"):
        with open("/sys/class/infiniband/%s/ports/1/state" % dev) as f:
            out.append(f.read().strip())
    return out


def link_up():
    """veth1 up again, with the routes its down took away."""
    subprocess.run(["ip", "link", "set", NETDEV[1], "up"], check=True)
    subprocess.run(["rxe-routes"], check=True)


def write_until_ok(ini, tgt, src, tb, seed, what):
    """Retry one verified 1 MiB WRITE for up to LINK_DOWN_BOUND_S (the engines
    may need a moment to see a port come back); returns the seconds taken."""
    ini.must(op="fill", addr=src, len=MiB, seed=seed)
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < LINK_DOWN_BOUND_S:
        last = ini.call(60.0, op="xfer", dir="write", segment=tgt.name, reqs=[[src, tb, MiB]])
        if last.get("ok"):
            break
        time.sleep(0.5)
    if not last or not last.get("ok"):
        raise PeerError("no transfer %.0fs after %s: %s" % (LINK_DOWN_BOUND_S, what, last))
    tgt.must(op="check", addr=tb, len=MiB, seed=seed)
    return time.monotonic() - t0


def link_flap(res, logdir):
    """veth1 set down under load (both rxe ports go down: the pair loses
    carrier), then up: every task ends in bounded time, and the same two
    engines transfer over the devices again."""
    def run():
        tgt = Peer("te-rs", "target", logdir, "flap", **side(0))
        ini = Peer("te-rs", "initiator", logdir, "flap", **side(1))
        try:
            tb = tgt.must(op="alloc", size=16 * MiB)["addr"]
            src = ini.must(op="alloc", size=16 * MiB)["addr"]
            ini.must(60.0, op="xfer", dir="write", segment=tgt.name, reqs=[[src, tb, 4096]])
            blk, per_batch, batches = 64 * KiB, 128, 32
            reqs = [[src + i * blk, tb + i * blk, blk] for i in range(per_batch)]
            for _ in range(batches):
                ini.must(op="submit", dir="write", segment=tgt.name, reqs=reqs)
            time.sleep(0.5)
            subprocess.run(["ip", "link", "set", NETDEV[1], "down"], check=True)
            t_down = time.monotonic()
            _, fin = wait_terminal(ini, batches * per_batch, LINK_DOWN_BOUND_S, "link down")
            took_down = time.monotonic() - t_down
            link_up()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not all("ACTIVE" in s for s in port_states()):
                time.sleep(0.2)
            if not all("ACTIVE" in s for s in port_states()):
                raise PeerError("ports not ACTIVE again: %s" % port_states())
            # The same engines move verified bytes again.
            again = write_until_ok(ini, tgt, src, tb, 21, "the link came back")
            return ("%d tasks ended %.1fs after link down (%s); transfers again %.1fs after "
                    "ACTIVE" % (batches * per_batch, took_down, fin, again))
        finally:
            subprocess.run(["ip", "link", "set", NETDEV[1], "up"])
            subprocess.run(["rxe-routes"])
            ini.kill()
            tgt.kill()
    res.run("[fault] netdev down under load, then up: bounded, and used again", run)


def port_down_at_start(res, logdir):
    """Both engines start while their ports are down (veth1 down: the pair
    has no carrier); once the link is up they transfer, without restart."""
    def run():
        subprocess.run(["ip", "link", "set", NETDEV[1], "down"], check=True)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any("ACTIVE" in s for s in port_states()):
                time.sleep(0.1)
            tgt = Peer("te-rs", "target", logdir, "downstart", **side(0))
            ini = Peer("te-rs", "initiator", logdir, "downstart", **side(1))
        finally:
            link_up()
        try:
            tb = tgt.must(op="alloc", size=MiB)["addr"]
            src = ini.must(op="alloc", size=MiB)["addr"]
            took = write_until_ok(ini, tgt, src, tb, 31, "the link came up")
            if "port not active" not in log_text(ini):
                raise PeerError("the initiator did not start with its port down")
            return "first transfer %.1fs after link up" % took
        finally:
            ini.kill()
            tgt.kill()
    res.run("[fault] ports down at engine start: used once they come up", run)


CHECKS = {
    "data": lambda res, d: data_pairs(res, d, [("te-rs", "te-rs", 0, 0), ("te-rs", "te-rs", 1, 0)]),
    "bench": bench_two_processes,
    "lossy": lambda res, d: bench_two_processes(res, d, lossy=True),
    "interop": lambda res, d: data_pairs(res, d, [("te-rs", "mooncake", 1, 0),
                                                 ("mooncake", "te-rs", 1, 0)]),
    "ack": ready_ack_logged,
    "gate": ready_ack_gate,
    "kill": peer_killed,
    "flap": link_flap,
    "downstart": port_down_at_start,
}


def all_checks():
    """CHECKS here plus the CHECKS of every other tests/rxe/*.py module."""
    checks = dict(CHECKS)
    for f in sorted(os.listdir(HERE)):
        if f.endswith(".py") and f not in ("suite.py",) and not f.startswith("_"):
            mod = __import__(f[:-3])
            checks.update(getattr(mod, "CHECKS", {}))
    return checks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the selected checks this many times (the long form)")
    ap.add_argument("--logdir", default=os.path.join(os.environ.get("TE_VM_OUT", "/tmp"), "rxe-logs"))
    a = ap.parse_args()
    os.makedirs(a.logdir, exist_ok=True)
    res = Results()
    t0 = time.monotonic()
    for rep in range(a.repeat):
        for name, fn in all_checks().items():
            if a.only and name not in a.only.split(","):
                continue
            print("== %s%s" % (name, " (run %d of %d)" % (rep + 1, a.repeat) if a.repeat > 1 else ""),
                  flush=True)
            fn(res, a.logdir)
    print("logs: %s; %.1fs" % (a.logdir, time.monotonic() - t0))
    print("%d passed, %d failed" % (res.passed, res.failed))
    sys.exit(1 if res.failed else 0)


if __name__ == "__main__":
    main()
