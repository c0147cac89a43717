"""Two rails per engine on real kernel verbs (issue: self-healing).

The guest of scripts/rdma-vm.sh has rxe2..rxe5 on veths vr2..vr5, all on one
bridge: the te-bench target uses rxe2 and rxe4, the initiator rxe3 and rxe5,
so every local rail reaches every peer rail and taking vrN down takes only
rxeN down. A verified te-bench workload (every byte of every batch checked,
any FAILED task fails the run) runs while one rail's netdev goes down and up
FLAPS times, alternately on the target's and the initiator's side: no task
may fail and no byte may be wrong. "rails_steady" is the same workload with
no flap (the long form is --repeat 50).
"""

import os
import re
import subprocess
import threading
import time

from run_interop import MiB, PeerError

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
TE_BENCH = os.environ.get("TE_BENCH", os.path.join(REPO, "target", "release", "te-bench"))
DEVS = os.environ.get("RXE_RAIL_DEVS", "rxe2 rxe3 rxe4 rxe5").split()
NETDEVS = os.environ.get("RXE_RAIL_NETDEVS", "vr2 vr3 vr4 vr5").split()
ADDRS = os.environ.get("RXE_RAIL_ADDRS",
                       "169.254.78.2 169.254.78.3 169.254.78.4 169.254.78.5").split()
FLAPS = int(os.environ.get("TE_RAIL_FLAPS", "5"))
# How long a rail stays down, and how long it runs between two flaps.
DOWN_S, UP_S = 1.5, 1.5


def port_active(dev):
    with open("/sys/class/infiniband/%s/ports/1/state" % dev) as f:
        return "ACTIVE" in f.read()


def wait_port(dev, active, bound=30.0):
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if port_active(dev) == active:
            return
        time.sleep(0.05)
    raise PeerError("%s still %s after %.0fs" % (dev, "down" if active else "ACTIVE", bound))


def set_link(netdev, up):
    subprocess.run(["ip", "link", "set", netdev, "up" if up else "down"], check=True)
    if up:
        subprocess.run(["rxe-routes"], check=True)


def flapper(stop, log):
    """Rail 1 of the target (rxe2), then of the initiator (rxe3), alternately."""
    t0 = time.monotonic()
    try:
        for k in range(FLAPS):
            i = k % 2
            if stop.wait(UP_S):
                return
            set_link(NETDEVS[i], False)
            wait_port(DEVS[i], False)
            log.append("%.1fs %s down" % (time.monotonic() - t0, DEVS[i]))
            time.sleep(DOWN_S)
            set_link(NETDEVS[i], True)
            wait_port(DEVS[i], True)
            log.append("%.1fs %s up" % (time.monotonic() - t0, DEVS[i]))
    except Exception as e:  # reported by the check
        log.append("flapper error: %s" % e)
    finally:
        for n in NETDEVS:
            subprocess.run(["ip", "link", "set", n, "up"])
        subprocess.run(["rxe-routes"])


def workload(logdir, tag, op, flaps):
    env = dict(os.environ, MC_LOG_LEVEL="INFO")
    tlog = open(os.path.join(logdir, tag + ".target.log"), "w")
    ilog_path = os.path.join(logdir, tag + ".initiator.log")
    tgt = subprocess.Popen([TE_BENCH, "--mode=target", "--protocol=rdma",
                            "--device_name=%s,%s" % (DEVS[0], DEVS[2]),
                            "--local_server_name=" + ADDRS[0],
                            "--buffer_size=%d" % (64 * MiB), "--duration=600", "--check"],
                           stdout=subprocess.PIPE, stderr=tlog, env=env, text=True)
    stop, log = threading.Event(), []
    fl = None
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
        # Room for every flap: a port takes a moment to report DOWN and ACTIVE.
        duration = FLAPS * 6 + 6 if flaps else 4
        if flaps:
            fl = threading.Thread(target=flapper, args=(stop, log))
            fl.start()
        with open(ilog_path, "w") as ilog:
            out = subprocess.run([TE_BENCH, "--mode=initiator", "--protocol=rdma",
                                  "--device_name=%s,%s" % (DEVS[1], DEVS[3]),
                                  "--local_server_name=" + ADDRS[1],
                                  "--segment_id=" + seg, "--operation=" + op,
                                  "--block_size=65536", "--batch_size=16", "--threads=2",
                                  "--duration=%d" % duration,
                                  "--buffer_size=%d" % (64 * MiB), "--check", "--no_baseline"],
                                 stdout=subprocess.PIPE, stderr=ilog, text=True,
                                 timeout=300, env=env)
        stop.set()
        if fl:
            fl.join()
        if out.returncode != 0:
            with open(ilog_path, errors="replace") as f:
                errs = [l for l in f if l[:1] in ("E", "W")]
            raise PeerError("initiator rc=%d (log %s): %s | %s" % (
                out.returncode, ilog_path, "".join(errs[:3])[-300:], out.stdout[-300:]))
        if any(l.startswith("flapper error") for l in log):
            raise PeerError("; ".join(log))
        if flaps and sum(1 for l in log if l.endswith(" up")) != FLAPS:
            raise PeerError("only %s while the workload ran" % log)
        return "%s%s" % (out.stdout.strip().splitlines()[-1][:80],
                         " | %d flaps" % FLAPS if flaps else "")
    finally:
        stop.set()
        if fl:
            fl.join()
        tgt.kill()
        tgt.wait()
        tlog.close()


def rail_checks(flaps):
    def check(res, logdir):
        for op in ("write", "read"):
            attempt = [0]

            def run(op=op):
                attempt[0] += 1
                tag = "rails-%s%s-%d" % ("flap-" if flaps else "", op, attempt[0])
                return workload(logdir, tag, op, flaps)
            label = "[rails] %s --check, two rails each%s" % (
                op, ", a rail down/up %d times" % FLAPS if flaps else "")
            res.run(label, run)
    return check


CHECKS = {
    "rails": rail_checks(True),
    "rails_steady": rail_checks(False),
}
