#!/usr/bin/env bash
# Run the C ABI harness: install te-rs into a temporary prefix, configure and
# build ctest/ as a separate CMake project against it, then run ctest.
# Usage: scripts/ctest.sh [extra ctest args, e.g. -R misuse]
# Honours CARGO_TARGET_DIR; TE_KEEP=1 keeps the temporary directory.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(mktemp -d /tmp/te-ctest.XXXXXX)"
if [ "${TE_KEEP:-0}" != 1 ]; then
    trap 'rm -rf "$WORK"' EXIT
else
    echo "ctest.sh: keeping $WORK" >&2
fi

"$ROOT/scripts/install.sh" "$WORK/prefix"
cmake -S "$ROOT/ctest" -B "$WORK/build" -DCMAKE_PREFIX_PATH="$WORK/prefix" \
    -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build "$WORK/build" -j "$(nproc)"
cd "$WORK/build"
ctest --output-on-failure --timeout 180 "$@"
