"""Speed comparison: Mooncake's transfer_engine_bench vs te-rs's te-bench.

Both run as two processes (target + initiator) with the same workload:
P2PHANDSHAKE metadata, TCP transport, --threads/--batch_size/--duration, each
block size and operation. Throughput comes from each tool's own report
(Mooncake: "batch count N" over "duration D"; te-bench: --json). CPU is the
initiator's rusage (wait4) plus the target's /proc/<pid>/stat delta over the
same run. Prints a markdown table of medians over --runs runs.

A pair is INITIATOR:TARGET with kinds mooncake|te-rs; "mooncake" alone means
mooncake:mooncake. Cross pairs (te-rs:mooncake, mooncake:te-rs) measure the
engines against each other. Run inside a loopback-only namespace
(scripts/bench-vs-mooncake.sh does that).
"""

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
CLK = os.sysconf("SC_CLK_TCK")


def mooncake_bench():
    import mooncake
    return os.path.join(os.path.dirname(mooncake.__file__), "transfer_engine_bench")


def proc_cpu(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime + stime


class Target:
    def __init__(self, kind, a, logdir):
        self.kind = kind
        self.log_path = os.path.join(logdir, "target-%s.log" % kind)
        self.log = open(self.log_path, "w")
        common = ["--mode=target", "--protocol=tcp", "--metadata_server=P2PHANDSHAKE",
                  "--local_server_name=127.0.0.1", "--buffer_size=%d" % a.buffer_size]
        exe = a.mooncake_bench if kind == "mooncake" else a.te_bench
        self.p = subprocess.Popen([exe] + common, stdout=self.log, stderr=subprocess.STDOUT)
        # Mooncake logs "listening on 127.0.0.1:PORT"; te-bench prints
        # "te-bench target ready: segment 127.0.0.1:PORT".
        pat = re.compile(r"(?:listening on|target ready: segment) (\S+:\d+)")
        deadline = time.monotonic() + 20
        self.segment = None
        while time.monotonic() < deadline and self.p.poll() is None:
            with open(self.log_path) as f:
                text = f.read()
            m = pat.search(text)
            # Mooncake registers its buffer right after logging the NUMA node
            # count and logs nothing afterwards: give it a moment.
            if m and (kind != "mooncake" or "numa node num" in text):
                self.segment = m.group(1)
                time.sleep(1.0 if kind == "mooncake" else 0.1)
                break
            time.sleep(0.1)
        if not self.segment:
            self.stop()
            raise RuntimeError("%s target did not come up, see %s" % (kind, self.log_path))

    def cpu(self):
        return proc_cpu(self.p.pid)

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)
            try:
                self.p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


def run_initiator(kind, a, segment, op, block, logdir):
    """One timed run. Returns dict(bytes_per_s, wall, cpu_initiator)."""
    log_path = os.path.join(logdir, "initiator-%s-to-%s-%s-%d.log" % (kind, segment, op, block))
    common = ["--mode=initiator", "--protocol=tcp", "--metadata_server=P2PHANDSHAKE",
              "--local_server_name=127.0.0.1", "--segment_id=%s" % segment,
              "--operation=%s" % op, "--block_size=%d" % block,
              "--batch_size=%d" % a.batch_size, "--threads=%d" % a.threads,
              "--duration=%d" % a.duration, "--buffer_size=%d" % a.buffer_size]
    jfile = None
    if kind == "mooncake":
        argv = [a.mooncake_bench] + common + ["--report_unit=GB", "--report_precision=4"]
    else:
        jfile = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
        argv = [a.te_bench] + common + ["--runs=1", "--no_baseline", "--json=%s" % jfile]
    with open(log_path, "w") as log:
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = t0 + a.duration + 60
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                p.kill()
                os.wait4(p.pid, 0)
                raise RuntimeError("%s initiator hung, see %s" % (kind, log_path))
            time.sleep(0.05)
        wall = time.monotonic() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError("%s initiator exit %d, see %s" % (kind, p.returncode, log_path))
    text = open(log_path).read()
    if kind == "mooncake":
        m = re.search(r"Test completed: duration ([\d.]+), batch count (\d+), throughput ([\d.]+)", text)
        if not m:
            raise RuntimeError("no 'Test completed' line in %s" % log_path)
        dur, batches = float(m.group(1)), int(m.group(2))
        bps = batches * a.batch_size * block / dur
    else:
        with open(jfile) as f:
            case = json.load(f)["cases"][0]
        os.unlink(jfile)
        bps = case["throughput_bps"]
        dur = case["runs"][0]["elapsed_s"]
    return {"bps": bps, "elapsed": dur, "wall": wall,
            "cpu_initiator": ru.ru_utime + ru.ru_stime}


def human(b):
    return "%d MiB" % (b >> 20) if b >= 1 << 20 else "%d KiB" % (b >> 10)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", default="mooncake,te-rs",
                    help="comma list of INITIATOR:TARGET (kinds mooncake|te-rs)")
    ap.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", 3)))
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--block_sizes", default="4096,65536,1048576")
    ap.add_argument("--operations", default="read,write")
    ap.add_argument("--buffer_size", type=int, default=128 << 20)
    ap.add_argument("--te_bench", default=os.environ.get(
        "TE_BENCH", os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target")),
                                 "release", "te-bench")))
    ap.add_argument("--mooncake_bench", default=None)
    ap.add_argument("--json", default=None, help="write all measurements here")
    ap.add_argument("--logdir", default="/tmp/te-rs-bench-vs-mooncake")
    a = ap.parse_args()
    a.mooncake_bench = a.mooncake_bench or mooncake_bench()
    blocks = [int(x) for x in a.block_sizes.split(",")]
    ops = a.operations.split(",")
    os.makedirs(a.logdir, exist_ok=True)

    # All targets stay up for the whole run and the pairs take turns within
    # each case, so load changes on the machine hit every engine alike.
    pairs, targets = [], {}
    failures = 0
    for pair in a.pairs.split(","):
        ikind, _, tkind = pair.partition(":")
        tkind = tkind or ikind
        label = ikind if ikind == tkind else "%s->%s" % (ikind, tkind)
        if tkind not in targets:
            try:
                targets[tkind] = Target(tkind, a, a.logdir)
                print("target %s: segment %s" % (tkind, targets[tkind].segment), flush=True)
            except Exception as e:
                print("SKIP target %s: %s" % (tkind, e), flush=True)
                targets[tkind] = None
                failures += 1
        if targets[tkind]:
            pairs.append((label, ikind, targets[tkind]))
    results = []  # one dict per (pair, op, block)
    try:
        for op in ops:
            for block in blocks:
                runs = {label: [] for label, _, _ in pairs}
                for i in range(a.runs):
                    for label, ikind, tgt in pairs:
                        c0 = tgt.cpu()
                        try:
                            r = run_initiator(ikind, a, tgt.segment, op, block, a.logdir)
                        except Exception as e:
                            print("   %-16s %-5s %-8s run %d FAILED: %s" %
                                  (label, op, human(block), i + 1, e), flush=True)
                            failures += 1
                            continue
                        r["cpu_target"] = tgt.cpu() - c0
                        runs[label].append(r)
                        print("   %-16s %-5s %-8s run %d: %8.3f GB/s  cpu init %.2fs target %.2fs over %.2fs" %
                              (label, op, human(block), i + 1, r["bps"] / 1e9, r["cpu_initiator"],
                               r["cpu_target"], r["wall"]), flush=True)
                for label, _, _ in pairs:
                    if runs[label]:
                        results.append({"pair": label, "op": op, "block": block, "runs": runs[label]})
    finally:
        for t in targets.values():
            if t:
                t.stop()

    def med(rs, f):
        return statistics.median(f(r) for r in rs)

    print()
    print("Workload: P2PHANDSHAKE + tcp, %d threads x batch %d, %d s per run, median of %d run(s); "
          "CPU = initiator rusage + target /proc delta, both processes, in a loopback netns."
          % (a.threads, a.batch_size, a.duration, a.runs))
    print()
    print("| engine | op | block | GB/s (median) | GB/s min..max | CPU cores | CPU s per GB |")
    print("|---|---|---|---|---|---|---|")
    for res in results:
        rs = res["runs"]
        bps = [r["bps"] for r in rs]
        cores = med(rs, lambda r: (r["cpu_initiator"] + r["cpu_target"]) / r["wall"])
        per_gb = med(rs, lambda r: (r["cpu_initiator"] + r["cpu_target"]) / (r["bps"] * r["elapsed"] / 1e9))
        res.update(median_bps=statistics.median(bps), cpu_cores=cores, cpu_s_per_gb=per_gb)
        print("| %s | %s | %s | %.3f | %.3f..%.3f | %.2f | %.3f |" %
              (res["pair"], res["op"], human(res["block"]), res["median_bps"] / 1e9,
               min(bps) / 1e9, max(bps) / 1e9, cores, per_gb))
    # te-rs / mooncake ratios when both ran.
    by = {(r["pair"], r["op"], r["block"]): r for r in results}
    rows = [(op, b) for op in ops for b in blocks
            if ("mooncake", op, b) in by and ("te-rs", op, b) in by]
    if rows:
        print()
        print("| op | block | te-rs / mooncake throughput | te-rs / mooncake CPU s per GB |")
        print("|---|---|---|---|")
        for op, b in rows:
            m, t = by[("mooncake", op, b)], by[("te-rs", op, b)]
            print("| %s | %s | %.2f | %.2f |" % (op, human(b), t["median_bps"] / m["median_bps"],
                                                   t["cpu_s_per_gb"] / m["cpu_s_per_gb"]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"workload": vars(a), "results": results}, f, indent=1)
    print()
    print("%d case(s) measured, %d failure(s); logs in %s" % (len(results), failures, a.logdir))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
