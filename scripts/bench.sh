#!/usr/bin/env bash
# The main job: a transfer benchmark between two te-rs engines on loopback
# (P2PHANDSHAKE metadata, TCP transport), every byte of the first pass
# verified, then timed runs at 4 KiB, 64 KiB and 1 MiB with the raw TCP
# stream measured in the same run as the baseline. Extra flags go to te-bench.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
export MC_LOG_LEVEL=${MC_LOG_LEVEL:-WARNING}
cargo build --release --bin te-bench
bench=target/release/te-bench
echo "== data check (every byte verified) =="
$bench --mode=loopback --operation=write,read --block_size=4096,65536,1048576 \
  --threads=4 --batch_size=32 --duration=1 --check --no_baseline
echo "== throughput (median of 3 runs, raw TCP stream as baseline) =="
$bench --mode=loopback --operation=write,read --block_size=4096,65536,1048576 \
  --threads=4 --batch_size=32 --duration=${TE_BENCH_DURATION:-4} --runs=${TE_BENCH_RUNS:-3} "$@"
