#!/bin/sh
# Usage: pkgconfig_test.sh <cc> <main.c> <output binary>
# Builds with flags from pkg-config only and runs with LD_LIBRARY_PATH.
set -eu
cc="$1"; src="$2"; out="$3"
pkg-config --exists transfer_engine
cflags="$(pkg-config --cflags transfer_engine)"
libs="$(pkg-config --libs transfer_engine)"
libdir="$(pkg-config --variable=libdir transfer_engine)"
pkg-config --libs --static transfer_engine | grep -q -- '-lpthread'
echo "cc $cflags $src $libs"
# shellcheck disable=SC2086
"$cc" -std=c99 -Wall -Werror $cflags "$src" -o "$out" $libs
LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$out"
