#!/usr/bin/env bash
# What scraping /metrics every 100 ms costs: te-bench (loopback, TCP) with and
# without a scraper, interleaved run by run; prints each run's GB/s and the
# medians. The scraper fetches the engine that binds MC_TE_METRIC_HTTP_PORT
# first (te-bench runs two engines in one process; the other one warns that
# the port is taken and serves none).
# Env: BIN (target/release/te-bench), ROUNDS (5), DURATION (4 s), PORT (19464),
#      OPS (write,read), BLOCKS (4096,65536).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/te-bench}
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-4}
PORT=${PORT:-19464}
OPS=${OPS:-write,read}
BLOCKS=${BLOCKS:-4096,65536}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

run() { # $1: off|on, $2: round
    local log="$out/$1.$2" pid scrapes=0
    if [ "$1" = on ]; then
        MC_LOG_LEVEL=ERROR MC_TE_METRIC_HTTP_PORT=$PORT "$BIN" --mode=loopback --operation="$OPS" \
            --block_size="$BLOCKS" --threads=4 --batch_size=32 --duration="$DURATION" --runs=1 \
            --no_baseline >"$log" 2>&1 &
        pid=$!
        while kill -0 "$pid" 2>/dev/null; do
            curl -sf -o /dev/null "http://127.0.0.1:$PORT/metrics" && scrapes=$((scrapes + 1))
            sleep 0.1
        done
        wait "$pid"
        echo "scrapes $scrapes" >>"$log"
    else
        MC_LOG_LEVEL=ERROR "$BIN" --mode=loopback --operation="$OPS" --block_size="$BLOCKS" \
            --threads=4 --batch_size=32 --duration="$DURATION" --runs=1 --no_baseline >"$log" 2>&1
    fi
}

for r in $(seq "$ROUNDS"); do
    run off "$r"
    run on "$r"
done
python3 - "$out" "$ROUNDS" <<'PY'
import re, statistics, sys, pathlib
out, rounds = pathlib.Path(sys.argv[1]), int(sys.argv[2])
res = {}
for mode in ("off", "on"):
    for r in range(1, rounds + 1):
        text = (out / f"{mode}.{r}").read_text()
        for op, block, gbps in re.findall(r"te-bench: (\w+) (\d+) B done: ([\d.]+) GB/s", text):
            res.setdefault((op, int(block), mode), []).append(float(gbps))
        m = re.search(r"scrapes (\d+)", text)
        if m:
            print(f"round {r}: {m.group(1)} scrapes")
print("| op | block | no scraper GB/s (runs) | scraped every 100 ms GB/s (runs) | change |")
print("|---|---|---|---|---|")
for (op, block, mode) in sorted(k for k in res if k[2] == "off"):
    a, b = res[(op, block, "off")], res.get((op, block, "on"), [])
    ma, mb = statistics.median(a), statistics.median(b)
    fmt = lambda v: " ".join(f"{x:.2f}" for x in v)
    print(f"| {op} | {block} | {ma:.3f} ({fmt(a)}) | {mb:.3f} ({fmt(b)}) | {100*(mb-ma)/ma:+.1f}% |")
PY
