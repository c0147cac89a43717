#!/usr/bin/env bash
# Run every test of te-rs: formatting, clippy, the Rust unit and integration
# tests (real etcd, Redis and te-metadata-server started on loopback; RDMA
# on the soft fabric), the C harness through ctest, and interop with the
# C++ Mooncake engine in a loopback-only network namespace.
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
cargo test --all-targets -- --test-threads="${TE_TEST_THREADS:-2}"

echo "== ctest: the C ABI from C/C++, dlopen, find_package, pkg-config =="
scripts/ctest.sh

echo "== interop with the C++ Mooncake engine =="
scripts/interop.sh
