#!/bin/sh
# Build and run programs with upstream Mooncake's own link lines against an
# installed te-rs, adding only -I/-L (where the binding is pointed at te-rs):
#   C, shared:   mooncake-p2p-store/build.sh EXT_LDFLAGS
#   C++, static: mooncake-transfer-engine/rust/build.rs (static=transfer_engine,
#                static=base, static=mooncake_common, then the dynamic libs)
# Third-party libraries upstream's C++ engine needs (glog, numa, ...) stay in
# the line when this machine has them; te-rs needs none of them, so those
# that are missing are dropped and named. The Mooncake names never are.
# Usage: upstream_link_lines.sh <cc> <cxx> <prefix> <ctest src dir> <out dir>
set -eu
cc="$1"; cxx="$2"; prefix="$3"; src="$4"; out="$5"
lib="$prefix/lib"

P2P_STORE_LDFLAGS="-ltransfer_engine -lbase -lasio -lstdc++ -lnuma -lglog -libverbs -lmlx5 -ljsoncpp -lmooncake_common -lm"
RUST_BINDING_STATIC="-ltransfer_engine -lbase -lmooncake_common"
RUST_BINDING_DYNAMIC="-lasio -lstdc++ -libverbs -lglog -lgflags -lpthread -ljsoncpp -lnuma -lcurl"

# Keep -lNAME if it is a Mooncake name or the linker finds it here.
available() {
    kept=""
    for flag in $1; do
        name="${flag#-l}"
        case "$name" in
        transfer_engine | base | asio | mooncake_common) kept="$kept $flag" ;;
        *)
            if echo 'int main(void){return 0;}' | "$cc" -x c - -o /dev/null "$flag" 2>/dev/null; then
                kept="$kept $flag"
            else
                echo "upstream_link_lines: -l$name (third-party, not needed by te-rs) is not installed here; dropped" >&2
            fi
            ;;
        esac
    done
    echo "$kept"
}

for name in base asio mooncake_common; do
    [ -f "$lib/lib$name.a" ] || { echo "missing $lib/lib$name.a" >&2; exit 1; }
done

c_libs="$(available "$P2P_STORE_LDFLAGS")"
set -x
# shellcheck disable=SC2086
"$cc" -std=c11 -Wall -Werror -I"$prefix/include" "$src/upstream_link_app.c" \
    -o "$out/upstream_link_c" -L"$lib" $c_libs
set +x
LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$out/upstream_link_c"
LD_LIBRARY_PATH="$lib" ldd "$out/upstream_link_c" | grep -q 'libtransfer_engine.so => '"$lib"

cxx_dyn="$(available "$RUST_BINDING_DYNAMIC")"
set -x
# shellcheck disable=SC2086
"$cxx" -std=c++11 -Wall -Werror -I"$prefix/include" "$src/compile_cpp.cpp" \
    -o "$out/upstream_link_cxx_static" -L"$lib" \
    -Wl,-Bstatic $RUST_BINDING_STATIC -Wl,-Bdynamic $cxx_dyn
set +x
if ldd "$out/upstream_link_cxx_static" | grep -q libtransfer_engine; then
    echo "the static link pulled in libtransfer_engine.so" >&2
    exit 1
fi
"$out/upstream_link_cxx_static"

# The p2p-store line again, with the Mooncake names taken from their
# static archives (the line itself carries -libverbs and -lm, which the
# engine's archive needs; a line without them needs
# `pkg-config --static --libs transfer_engine`).
c_static=""
for flag in $c_libs; do
    case "$flag" in
    -ltransfer_engine | -lbase | -lasio | -lmooncake_common)
        c_static="$c_static -Wl,-Bstatic $flag -Wl,-Bdynamic" ;;
    *) c_static="$c_static $flag" ;;
    esac
done
set -x
# shellcheck disable=SC2086
"$cc" -std=c11 -Wall -Werror -I"$prefix/include" "$src/upstream_link_app.c" \
    -o "$out/upstream_link_c_static" -L"$lib" $c_static
set +x
if ldd "$out/upstream_link_c_static" | grep -q libtransfer_engine; then
    echo "the static link pulled in libtransfer_engine.so" >&2
    exit 1
fi
"$out/upstream_link_c_static"
echo "upstream link lines: OK"
