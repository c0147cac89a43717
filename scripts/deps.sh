#!/usr/bin/env bash
# Install the system packages te-rs builds and tests with (Debian, as root).
# Installs only what is missing; safe to run repeatedly.
set -euo pipefail

need=()
want_pkgs="pkg-config gcc g++ make cmake clang libclang-dev libibverbs-dev librdmacm-dev iproute2 procps"
if [ "${1:-}" = "--test" ]; then
  want_pkgs="$want_pkgs etcd-server redis-server python3 python3-pip"
  # tests/metrics_prometheus.rs scrapes the engines with a real Prometheus.
  want_pkgs="$want_pkgs prometheus"
  # Third-party libraries upstream's link lines name (ctest upstream_link_lines
  # links with those lines exactly; te-rs itself needs none of them).
  want_pkgs="$want_pkgs libgoogle-glog-dev libgflags-dev libjsoncpp-dev libnuma-dev libcurl4-openssl-dev"
fi
for p in $want_pkgs; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "deps: missing packages ${need[*]}; run as root (or install them) and retry" >&2
    exit 1
  fi
  echo "deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  for d in "$HOME/.cargo/bin" /usr/local/cargo/bin; do
    [ -x "$d/cargo" ] && export PATH="$d:$PATH"
  done
fi
command -v cargo >/dev/null 2>&1 || { echo "deps: cargo not found: install a Rust toolchain (rustup) first" >&2; exit 1; }
