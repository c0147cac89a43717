#!/bin/sh
# Usage: exported_symbols.sh <libtransfer_engine.so> <expected list> [<extension list>]
# The dynamic function symbols defined by the library must be exactly the
# upstream header's 27 plus those of te-rs's extension header.
set -eu
actual="$(nm -D --defined-only "$1" | awk '$2 == "T" { print $3 }' | LC_ALL=C sort)"
expected="$(cat "$2" ${3:+"$3"} | LC_ALL=C sort)"
if [ "$actual" != "$expected" ]; then
    echo "exported function symbols differ from the headers' (27 upstream + extension):" >&2
    printf '%s\n' "$actual" >/tmp/te_actual.$$
    printf '%s\n' "$expected" >/tmp/te_expected.$$
    diff /tmp/te_expected.$$ /tmp/te_actual.$$ >&2 || true
    rm -f /tmp/te_actual.$$ /tmp/te_expected.$$
    exit 1
fi
echo "exported_symbols: $(printf '%s\n' "$actual" | wc -l) functions, as expected"
