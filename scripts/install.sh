#!/usr/bin/env bash
# Build te-rs in release mode and install the C library package:
#   <prefix>/lib/libtransfer_engine.{so,a}
#   <prefix>/lib/lib{base,asio,mooncake_common}.a   (empty: upstream link lines name them)
#   <prefix>/include/transfer_engine_c.h, transfer_engine_ext.h (te-rs's extension)
#   <prefix>/bin/{te-bench,te-metadata-server}, bin/transfer_engine_bench -> te-bench
#     (as last built by `cargo build --release --bins`; built here only if missing)
#   <prefix>/lib/cmake/MooncakeTransferEngine/MooncakeTransferEngineConfig{,Version}.cmake
#   <prefix>/lib/pkgconfig/transfer_engine.pc
# Usage: scripts/install.sh [PREFIX]   (default /usr/local)
# Honours CARGO_TARGET_DIR. Set TE_SKIP_BUILD=1 to install existing artifacts.
set -euo pipefail

PREFIX="${1:-/usr/local}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
RELEASE="$TARGET_DIR/release"

mkdir -p "$PREFIX"
PREFIX="$(cd "$PREFIX" && pwd)"

VERSION="$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -n1)"
# Fallback if the rustc note cannot be read; matches x86_64/aarch64 glibc.
NATIVE_LIBS="-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"
NOTE_FILE="$RELEASE/.te-native-static-libs"

if [ "${TE_SKIP_BUILD:-0}" != 1 ]; then
    echo "install.sh: building release library (cargo rustc --release --lib)" >&2
    # `cargo rustc` builds every crate type of the lib (cdylib, staticlib,
    # rlib) and lets us ask rustc which native libraries the .a needs.
    log="$(mktemp)"
    if ! (cd "$ROOT" && cargo rustc --release --lib -- --print native-static-libs) >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        exit 1
    fi
    note="$(sed -n 's/.*native-static-libs: *//p' "$log" | tail -n1)"
    rm -f "$log"
    if [ -n "$note" ]; then
        printf '%s\n' "$note" >"$NOTE_FILE"
    fi
    # Building the tools here would rebuild the library without the flag
    # above (and the next install again with it): build them only if missing.
    if [ ! -f "$RELEASE/te-bench" ] || [ ! -f "$RELEASE/te-metadata-server" ]; then
        echo "install.sh: building release tools (cargo build --release --bins)" >&2
        (cd "$ROOT" && cargo build --release --bins --quiet)
    fi
fi
if [ -s "$NOTE_FILE" ]; then
    NATIVE_LIBS="$(cat "$NOTE_FILE")"
fi

# Deduplicate, keeping the first occurrence (order matters for static links).
NATIVE_LIBS="$(printf '%s\n' $NATIVE_LIBS | awk '!seen[$0]++' | tr '\n' ' ' | sed 's/ $//')"
# CMake wants bare names: -lpthread -> pthread.
STATIC_DEPS="$(printf '%s\n' $NATIVE_LIBS | sed -n 's/^-l//p' | tr '\n' ';' | sed 's/;$//')"

for f in libtransfer_engine.so libtransfer_engine.a; do
    [ -f "$RELEASE/$f" ] || { echo "install.sh: missing $RELEASE/$f" >&2; exit 1; }
done

install -d "$PREFIX/lib" "$PREFIX/include" "$PREFIX/bin" \
    "$PREFIX/lib/cmake/MooncakeTransferEngine" "$PREFIX/lib/pkgconfig"
install -m 0755 "$RELEASE/libtransfer_engine.so" "$PREFIX/lib/"
install -m 0644 "$RELEASE/libtransfer_engine.a" "$PREFIX/lib/"
install -m 0644 "$ROOT/include/transfer_engine_c.h" "$ROOT/include/transfer_engine_ext.h" "$PREFIX/include/"
for tool in te-bench te-metadata-server; do
    [ -f "$RELEASE/$tool" ] || { echo "install.sh: missing $RELEASE/$tool" >&2; exit 1; }
    install -m 0755 "$RELEASE/$tool" "$PREFIX/bin/"
done
# te-bench run under upstream's name takes upstream's defaults and output.
ln -sf te-bench "$PREFIX/bin/transfer_engine_bench"
# Upstream's bindings link -lbase -lasio -lmooncake_common next to the
# engine; te-rs has everything in libtransfer_engine, so these are empty
# archives (build.rs makes them in the build tree; recreate if missing).
for name in base asio mooncake_common; do
    if [ ! -f "$RELEASE/lib$name.a" ]; then
        printf '!<arch>\n' >"$RELEASE/lib$name.a"
    fi
    install -m 0644 "$RELEASE/lib$name.a" "$PREFIX/lib/"
done

subst() {
    sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@VERSION@|$VERSION|g" \
        -e "s|@STATIC_LIBS@|$NATIVE_LIBS|g" -e "s|@STATIC_DEPS@|$STATIC_DEPS|g" "$1" >"$2"
}
subst "$ROOT/cmake/MooncakeTransferEngineConfig.cmake.in" \
    "$PREFIX/lib/cmake/MooncakeTransferEngine/MooncakeTransferEngineConfig.cmake"
subst "$ROOT/cmake/MooncakeTransferEngineConfigVersion.cmake.in" \
    "$PREFIX/lib/cmake/MooncakeTransferEngine/MooncakeTransferEngineConfigVersion.cmake"
subst "$ROOT/cmake/transfer_engine.pc.in" "$PREFIX/lib/pkgconfig/transfer_engine.pc"

echo "install.sh: installed te-rs $VERSION into $PREFIX (static deps: $NATIVE_LIBS)" >&2
