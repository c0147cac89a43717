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
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
export PYTHONDONTWRITEBYTECODE=1  # keep __pycache__ out of the source tree

if ! "$PY" -c 'import mooncake.engine' 2>/dev/null; then
    echo "bench-vs-mooncake: installing mooncake-transfer-engine-non-cuda from PyPI" >&2
    "$PY" -m pip install --quiet mooncake-transfer-engine-non-cuda
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
if [[ $EUID -eq 0 ]] && command -v ip >/dev/null; then
    NS="te-bench-vs-mc-$$"
    ip netns add "$NS"
    trap 'ip netns del "$NS" 2>/dev/null || true' EXIT
    ip netns exec "$NS" ip link set lo up
    if ip netns exec "$NS" ip -o link show | grep -qv ': lo:'; then
        echo "bench-vs-mooncake: namespace $NS has a non-loopback interface" >&2
        exit 1
    fi
    ip netns exec "$NS" "${RUN[@]}"
else
    unshare -rn sh -c 'ip link set lo up && exec "$@"' sh "${RUN[@]}"
fi
