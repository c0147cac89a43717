#!/usr/bin/env bash
# Speed comparison of te-rs's te-bench against the upstream C++ Mooncake
# transfer_engine_bench (PyPI mooncake-transfer-engine-non-cuda): same
# workload (P2PHANDSHAKE + tcp, 4 threads x batch 32, 8 s, 4 KiB/64 KiB/1 MiB,
# read and write), target and initiator as two processes in a fresh
# loopback-only network namespace. Prints a markdown table of medians.
#
# Usage: scripts/bench-vs-mooncake.sh [bench_vs_mooncake.py args]
#   --runs N (default 3, or BENCH_RUNS)   --duration S (8)
#   --pairs mooncake,te-rs                 INITIATOR:TARGET pairs; cross pairs
#                                          te-rs:mooncake / mooncake:te-rs work too
#   --json FILE                            all measurements
# Env: TE_BENCH (te-bench path; default <target>/release/te-bench, built unless
#      TE_RS_NO_BUILD=1). Pass --pairs mooncake to measure Mooncake alone.
#
# Latency instead: scripts/bench-vs-mooncake.sh --latency [ROUNDS [SECS]] (5, 2):
# per round a te-rs target + `te-bench --latency` initiator, then a C++ target +
# C++ client (mooncake.engine's transfer_sync_*), each client a fresh process:
# create → openSegment → first 4 KiB WRITE, warm 4 KiB WRITE/READ p50/p99 one at
# a time. Prints a markdown table of medians (and the raw rounds as JSON).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"

# Cleaned up on exit, however the script ends.
NS_MADE=""
DRIVER=""
cleanup() {
    [[ -z "$NS_MADE" ]] || ip netns del "$NS_MADE" 2>/dev/null || true
    [[ -z "$DRIVER" ]] || rm -f "$DRIVER"
}
trap cleanup EXIT

# Run "$@" in a fresh network namespace that has only loopback: as root a
# named one (ip netns), otherwise an unprivileged user + network namespace.
in_loopback_netns() {
    local name="$1-$$"
    shift
    if [[ $EUID -eq 0 ]] && command -v ip >/dev/null; then
        ip netns add "$name"
        NS_MADE="$name"
        ip netns exec "$name" ip link set lo up
        if ip netns exec "$name" ip -o link show | grep -qv ': lo:'; then
            echo "bench-vs-mooncake: namespace $name has a non-loopback interface" >&2
            exit 1
        fi
        ip netns exec "$name" "$@"
    else
        unshare -rn sh -c 'ip link set lo up && exec "$@"' sh "$@"
    fi
}
export PYTHONDONTWRITEBYTECODE=1  # keep __pycache__ out of the source tree

if ! "$PY" -c 'import mooncake.engine' 2>/dev/null; then
    echo "bench-vs-mooncake: installing mooncake-transfer-engine-non-cuda from PyPI" >&2
    "$PY" -m pip install --quiet mooncake-transfer-engine-non-cuda
fi

if [[ "${1:-}" == --latency ]]; then
    DRIVER="$(mktemp /tmp/te-latency-XXXXXX.py)"
    cat > "$DRIVER" <<'PYEOF'
"""Latency side by side: te-rs (te-bench --latency) and the C++ engine
(mooncake.engine from the PyPI wheel), each as a target process and an
initiator process. Per round and kind: a fresh initiator engine times create ->
openSegment -> first 4 KiB WRITE completed, then warm 4 KiB WRITEs and READs
one at a time. Prints a markdown table of medians over rounds.

driver.py drive TE_BENCH ROUNDS SECS | mc-target | mc-client SEG ADDR SECS
"""
import ctypes, json, mmap, os, re, signal, statistics, subprocess, sys, tempfile, time

N = 4096


def pct(v, q):
    v = sorted(v)
    return v[round((len(v) - 1) * q)]


def mc_engine():
    from mooncake.engine import TransferEngine
    te = TransferEngine()
    if te.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") != 0:
        raise RuntimeError("mooncake initialize failed")
    return te


def buf(n):
    m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.write(b"\x07" * n)
    return m, ctypes.addressof(ctypes.c_char.from_buffer(m))


def mc_target():
    te = mc_engine()
    m, a = buf(1 << 20)
    assert te.register_memory(a, 1 << 20, "cpu:0") == 0
    print("READY 127.0.0.1:%d %d" % (te.get_rpc_port(), a), flush=True)
    while True:
        time.sleep(1)


def mc_client(seg, addr, secs):
    import mooncake.engine  # noqa: F401  (import outside the timing)
    m, a = buf(N)
    t = time.perf_counter()
    te = mc_engine()
    assert te.register_memory(a, N, "cpu:0") == 0
    assert te.transfer_sync_write(seg, a, addr, N) == 0
    out = {"first_s": time.perf_counter() - t}
    for op, fn in (("write", te.transfer_sync_write), ("read", te.transfer_sync_read)):
        for _ in range(20):
            fn(seg, a, addr, N)
        v, s = [], time.perf_counter()
        while time.perf_counter() - s < secs or len(v) < 100:
            t0 = time.perf_counter()
            assert fn(seg, a, addr, N) == 0
            v.append(time.perf_counter() - t0)
        out[op] = {"p50_s": pct(v, .5), "p99_s": pct(v, .99)}
    print(json.dumps(out), flush=True)
    os._exit(0)  # skip the engine's teardown, outside the timing anyway


def start_target(argv, pat):
    log = tempfile.TemporaryFile(mode="w+")
    p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        log.seek(0)
        m = re.search(pat, log.read())
        if m:
            return p, m
        if p.poll() is not None:
            break
        time.sleep(0.05)
    p.kill()
    raise RuntimeError("target %s did not come up" % argv[0])


def stop(p):
    p.send_signal(signal.SIGINT)
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def round_te_rs(te_bench, secs):
    p, m = start_target([te_bench, "--mode=target", "--buffer_size=1048576"],
                        r"target ready: segment (\S+) buffer")
    try:
        j = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
        subprocess.run([te_bench, "--mode=initiator", "--segment_id=" + m.group(1), "--latency",
                        "--operation=write,read", "--block_size=4096", "--runs=1",
                        "--duration=%g" % secs, "--json=" + j],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        lat = json.load(open(j))["latency"]
        os.unlink(j)
        out = {"first_s": lat["create_to_first_completion_s"]}
        for c in lat["cases"]:
            out[c["operation"]] = {"p50_s": c["p50_s"], "p99_s": c["p99_s"]}
        return out
    finally:
        stop(p)


def round_mc(secs):
    me = os.path.abspath(__file__)
    p, m = start_target([sys.executable, me, "mc-target"], r"READY (\S+) (\d+)")
    try:
        time.sleep(0.5)  # the C++ engine logs READY before its buffer is published
        r = subprocess.run([sys.executable, me, "mc-client", m.group(1), m.group(2), str(secs)],
                           check=True, capture_output=True, text=True)
        return json.loads(r.stdout.strip().splitlines()[-1])
    finally:
        p.kill()
        p.wait()


def drive(te_bench, rounds, secs):
    res = {"te-rs": [], "C++": []}
    for _ in range(rounds):
        res["te-rs"].append(round_te_rs(te_bench, secs))
        res["C++"].append(round_mc(secs))
    med = lambda k, f: statistics.median(f(r) for r in res[k])
    load = open("/proc/loadavg").read().split()[:3]
    print("\nlatency, one request at a time, 4 KiB, TCP, loopback netns, median of %d rounds "
          "(load %s)" % (rounds, " ".join(load)))
    print("| engine (client → target) | create → first WRITE ms | WRITE p50 µs | WRITE p99 µs "
          "| READ p50 µs | READ p99 µs |")
    print("|---|---|---|---|---|---|")
    for k in res:
        print("| %s → %s | %.2f | %.1f | %.1f | %.1f | %.1f |" % (
            k, k, med(k, lambda r: r["first_s"]) * 1e3,
            med(k, lambda r: r["write"]["p50_s"]) * 1e6, med(k, lambda r: r["write"]["p99_s"]) * 1e6,
            med(k, lambda r: r["read"]["p50_s"]) * 1e6, med(k, lambda r: r["read"]["p99_s"]) * 1e6))
    print(json.dumps(res))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "mc-target":
        mc_target()
    elif cmd == "mc-client":
        mc_client(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    else:
        drive(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
PYEOF
    TE_BENCH="${TE_BENCH:-}"
    if [[ -z "$TE_BENCH" ]]; then
        [[ "${TE_RS_NO_BUILD:-0}" == 1 ]] || (cd "$REPO" && cargo build --release --bin te-bench --quiet)
        TE_BENCH="${CARGO_TARGET_DIR:-$REPO/target}/release/te-bench"
    fi
    RUN=("$PY" "$DRIVER" drive "$TE_BENCH" "${2:-5}" "${3:-2}")
    export MC_LOG_LEVEL="${MC_LOG_LEVEL:-ERROR}"
    in_loopback_netns te-latency-vs-mc "${RUN[@]}"
    exit 0
fi

wants_te_rs=1
for arg in "$@"; do
    case "$arg" in --pairs=mooncake | --pairs=mooncake:mooncake) wants_te_rs=0 ;; esac
done
prev=""
for arg in "$@"; do
    if [[ "$prev" == "--pairs" && ( "$arg" == mooncake || "$arg" == mooncake:mooncake ) ]]; then
        wants_te_rs=0
    fi
    prev="$arg"
done
if [[ $wants_te_rs == 1 && -z "${TE_BENCH:-}" && "${TE_RS_NO_BUILD:-0}" != 1 ]]; then
    (cd "$REPO" && cargo build --release --bin te-bench --quiet)
fi

RUN=("$PY" "$REPO/tests/interop/bench_vs_mooncake.py" "$@")
in_loopback_netns te-bench-vs-mc "${RUN[@]}"
