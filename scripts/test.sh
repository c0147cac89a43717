#!/usr/bin/env bash
# Run every test of te-rs: formatting, clippy, the Rust unit and integration
# tests (real etcd, Redis and te-metadata-server started on loopback; RDMA
# on the soft fabric), the C harness through ctest, interop with the
# C++ Mooncake engine in a loopback-only network namespace, the Python
# package (python/) with pytest against te-rs and upstream's wheel, and the
# RDMA suite on real kernel verbs (SoftRoCE) in a QEMU guest.
# Installs missing system packages itself (Debian, as root).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh --test

echo "== cargo fmt --check =="
cargo fmt --all -- --check
echo "== cargo clippy -D warnings =="
cargo clippy --all-targets -- -D warnings

echo "== metadata servers (etcd, redis) on loopback =="
env_file=$(mktemp)
scripts/services.sh start >"$env_file"
trap 'scripts/services.sh stop >/dev/null 2>&1 || true; rm -f "$env_file"' EXIT
set -a; . "$env_file"; set +a

echo "== cargo test (unit + integration) =="
cargo build --release --lib --bins
# The bundled HTTP metadata server, for the C-API store test (ctest data_store).
md_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target/release/te-metadata-server --host 127.0.0.1 --port "$md_port" >/dev/null 2>&1 &
md_pid=$!
trap 'kill $md_pid 2>/dev/null || true; scripts/services.sh stop >/dev/null 2>&1 || true; rm -f "$env_file"' EXIT
export TE_TEST_METADATA_URLS="http://127.0.0.1:$md_port/metadata;etcd://$TE_TEST_ETCD;$TE_TEST_ETCD;$TE_TEST_REDIS"
cargo test --all-targets -- --test-threads="${TE_TEST_THREADS:-2}"

echo "== 1,000 initiator engines against one target (threads < 64, RSS < 500 MB) =="
cargo build --release --example many_peers --quiet
MC_LOG_LEVEL=ERROR target/release/examples/many_peers 1000 4

echo "== ctest: the C ABI from C/C++, dlopen, find_package, pkg-config =="
scripts/ctest.sh

echo "== interop with the C++ Mooncake engine =="
scripts/interop.sh

echo "== python: mooncake.engine on te-rs (pip install ./python, pytest, upstream interop) =="
scripts/pytest.sh

echo "== RDMA on real kernel verbs: SoftRoCE in a QEMU guest =="
scripts/test-rxe.sh
