#!/usr/bin/env bash
# Interop suite: te-rs (C ABI, ctypes) <-> upstream C++ Mooncake engine (PyPI
# mooncake-transfer-engine-non-cuda), P2PHANDSHAKE + TCP, in a fresh network
# namespace that has only loopback, so no traffic leaves 127.0.0.0/8.
#
# Usage: scripts/interop.sh [run_interop.py args, e.g. --pairs te-rs:mooncake]
# Env:   TE_RS_LIB      te-rs shared library (default: <target>/release/libtransfer_engine.so)
#        TE_METADATA_SERVER te-rs HTTP metadata server (default: next to TE_RS_LIB)
#        TE_BENCH       te-rs's te-bench (default: next to TE_RS_LIB)
#        TE_RS_NO_BUILD=1  do not run `cargo build --release` first
#        INTEROP_LOGDIR per-process logs (default /tmp/te-rs-interop)
# Needs root (ip netns) or unprivileged user namespaces (unshare -rn).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
export PYTHONDONTWRITEBYTECODE=1  # keep __pycache__ out of the source tree

fail() { echo "interop: $*" >&2; echo "0 passed, 1 failed"; exit 1; }

if ! "$PY" -c 'import mooncake.engine' 2>/dev/null; then
    echo "interop: installing mooncake-transfer-engine-non-cuda from PyPI" >&2
    "$PY" -m pip install --quiet mooncake-transfer-engine-non-cuda \
        || fail "pip install mooncake-transfer-engine-non-cuda failed"
fi

if [[ -z "${TE_RS_LIB:-}" ]]; then
    TE_RS_LIB="${CARGO_TARGET_DIR:-$REPO/target}/release/libtransfer_engine.so"
    if [[ "${TE_RS_NO_BUILD:-0}" != 1 ]]; then
        (cd "$REPO" && cargo build --release --lib --bin te-metadata-server --bin te-bench --quiet) \
            || fail "cargo build --release failed"
    fi
fi
export TE_RS_LIB
export INTEROP_LOGDIR="${INTEROP_LOGDIR:-/tmp/te-rs-interop}"

RUN=("$PY" "$REPO/tests/interop/run_interop.py" "$@")

if [[ $EUID -eq 0 ]] && command -v ip >/dev/null; then
    NS="te-interop-$$"
    ip netns add "$NS" || fail "ip netns add failed"
    trap 'ip netns del "$NS" 2>/dev/null || true' EXIT
    ip netns exec "$NS" ip link set lo up
    # Fail closed: the namespace must hold nothing but lo.
    if ip netns exec "$NS" ip -o link show | grep -qv ': lo:'; then
        fail "namespace $NS has a non-loopback interface"
    fi
    set +e
    timeout 180 ip netns exec "$NS" "${RUN[@]}"
    rc=$?
    set -e
else
    set +e
    timeout 180 unshare -rn sh -c 'ip link set lo up && exec "$@"' sh "${RUN[@]}"
    rc=$?
    set -e
fi
if [[ $rc -eq 124 ]]; then
    fail "suite timed out after 180 s"
fi
exit $rc
