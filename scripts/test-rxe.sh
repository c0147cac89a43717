#!/usr/bin/env bash
# RDMA on real kernel verbs: build on the host, then run scripts/rxe-suite.sh
# in a QEMU guest with SoftRoCE devices (scripts/rdma-vm.sh). Part of
# scripts/test.sh; a missing QEMU or guest kernel fails it, never skips it.
# Env: TE_VM_TIMEOUT (whole guest, default 2400 s), TE_VM_OUT (results and
# console log; default a fresh folder under /tmp).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(python3 -c 'import sys; print(sys.executable)')
if ! "$PY" -c 'import mooncake.engine' 2>/dev/null; then
    echo "test-rxe: installing mooncake-transfer-engine-non-cuda from PyPI" >&2
    "$PY" -m pip install --quiet mooncake-transfer-engine-non-cuda
fi
cargo build --release --lib --bins --quiet
bin=$(cargo test --release --test verbs_rxe --no-run --message-format=json 2>/dev/null |
    "$PY" -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "verbs_rxe":
        print(m["executable"])')
[[ -x "$bin" ]] || { echo "test-rxe: cannot build tests/verbs_rxe.rs"; echo "0 passed, 1 failed"; exit 1; }
export TE_VM_TIMEOUT="${TE_VM_TIMEOUT:-2400}"
export TE_VM_OUT="${TE_VM_OUT:-$(mktemp -d /tmp/te-rs-rxe.XXXXXX)}"
lib="$(pwd)/target/release/libtransfer_engine.so"
echo "test-rxe: guest results and console log in $TE_VM_OUT"
exec scripts/rdma-vm.sh "RXE_VERBS_BIN='$bin' PY='$PY' TE_RS_LIB='$lib' scripts/rxe-suite.sh"
