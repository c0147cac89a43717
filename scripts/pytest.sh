#!/usr/bin/env bash
# The Python package (python/, `mooncake.engine` on te-rs): fmt, clippy and
# unit tests of its crate; `pip install ./python` into a fresh virtualenv
# (+ pytest, numpy); upstream's PyPI wheel mooncake-transfer-engine-non-cuda
# into a second one (both provide `mooncake.engine`); `pip wheel ./python`
# installed into a third; then pytest (python/tests) in a loopback-only
# network namespace. Fails on any failure, including "no tests collected".
#
# Env: PYTHON (default python3), CARGO_TARGET_DIR (default <repo>/target,
#      shared with the root build so its dependencies are not rebuilt),
#      TE_RS_PYTEST_LOGDIR (per-peer logs, default /tmp/te-rs-pytest),
#      extra pytest arguments as "$@".
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
export PYTHONDONTWRITEBYTECODE=1
fail() { echo "pytest.sh: $*" >&2; exit 1; }

WORK="$(mktemp -d /tmp/te-rs-py.XXXXXX)"
# Virtualenvs are made afresh (--clear) at a fixed place: maturin hands the
# venv's interpreter path to PyO3's build script, and a new path every run
# would rebuild PyO3.
VENVS="${TE_RS_PY_VENVS:-$CARGO_TARGET_DIR/py-venvs}"
mkdir -p "$VENVS"
NS=""
cleanup() {
    if [[ -n "$NS" ]]; then ip netns del "$NS" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# Debian's own python3 needs python3-venv for `-m venv`.
if ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then
    [[ $EUID -eq 0 ]] || fail "$PY lacks venv/ensurepip: install python3-venv"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null \
        || fail "apt-get install python3-venv failed"
fi

echo "-- python crate: fmt, clippy, unit tests"
(cd "$REPO/python" && cargo fmt -- --check) || fail "cargo fmt (python/) differs"
(cd "$REPO/python" && cargo clippy --release --all-targets -- -D warnings) || fail "clippy (python/)"
libdir="$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR") or "")')"
(cd "$REPO/python" && LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    cargo test --release) || fail "cargo test (python/)"

echo "-- pip install ./python (fresh virtualenv)"
"$PY" -m venv --clear "$VENVS/te-rs"
"$VENVS/te-rs/bin/pip" install --quiet "$REPO/python" pytest numpy \
    || fail "pip install ./python pytest numpy failed"

echo "-- upstream's wheel in its own virtualenv"
"$PY" -m venv --clear "$VENVS/upstream"
"$VENVS/upstream/bin/pip" install --quiet mooncake-transfer-engine-non-cuda numpy \
    || fail "pip install mooncake-transfer-engine-non-cuda failed"

echo "-- pip wheel ./python, installed into a third virtualenv"
"$VENVS/te-rs/bin/pip" wheel --quiet --no-deps "$REPO/python" -w "$WORK/wheels" \
    || fail "pip wheel ./python failed"
wheel=$(ls "$WORK"/wheels/mooncake_te_rs-*.whl 2>/dev/null | head -1)
[[ -n "$wheel" ]] || fail "pip wheel produced no mooncake_te_rs wheel"
"$PY" -m venv --clear "$VENVS/wheel"
"$VENVS/wheel/bin/pip" install --quiet "$wheel" || fail "installing $wheel failed"
MC_LOG_LEVEL=WARNING "$VENVS/wheel/bin/python" -c '
import mooncake.engine as m
e = m.TransferEngine()
assert m.BACKEND == "te-rs" and e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
assert e.get_rpc_port() > 0
' || fail "the wheel does not import or initialize"

echo "-- pytest python/tests (loopback-only network namespace)"
RUN=(env MOONCAKE_UPSTREAM_PYTHON="$VENVS/upstream/bin/python" MC_TCP_BIND_ADDRESS=127.0.0.1
     MC_LOG_LEVEL="${MC_LOG_LEVEL:-WARNING}"
     "$VENVS/te-rs/bin/python" -m pytest -q -p no:cacheprovider -rfE "$REPO/python/tests" "$@")
set +e
if [[ $EUID -eq 0 ]] && command -v ip >/dev/null; then
    NS="te-rs-py-$$"
    ip netns add "$NS" || fail "ip netns add failed"
    ip netns exec "$NS" ip link set lo up
    if ip netns exec "$NS" ip -o link show | grep -qv ': lo:'; then
        fail "namespace $NS has a non-loopback interface"
    fi
    timeout 600 ip netns exec "$NS" "${RUN[@]}"
else
    timeout 600 unshare -rn sh -c 'ip link set lo up && exec "$@"' sh "${RUN[@]}"
fi
rc=$?
set -e
case $rc in
    0) echo "pytest.sh: all passed" ;;
    5) fail "pytest collected no tests" ;;
    124) fail "pytest timed out after 600 s" ;;
    *) fail "pytest failed (rc=$rc); peer logs in ${TE_RS_PYTEST_LOGDIR:-/tmp/te-rs-pytest}" ;;
esac
