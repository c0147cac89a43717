#!/bin/sh
# Usage: exported_symbols.sh <libtransfer_engine.so> <expected list>
# The dynamic function symbols defined by the library must be exactly the list.
set -eu
actual="$(nm -D --defined-only "$1" | awk '$2 == "T" { print $3 }' | LC_ALL=C sort)"
expected="$(LC_ALL=C sort "$2")"
if [ "$actual" != "$expected" ]; then
    echo "exported function symbols differ from the header's 27:" >&2
    printf '%s\n' "$actual" >/tmp/te_actual.$$
    printf '%s\n' "$expected" >/tmp/te_expected.$$
    diff /tmp/te_expected.$$ /tmp/te_actual.$$ >&2 || true
    rm -f /tmp/te_actual.$$ /tmp/te_expected.$$
    exit 1
fi
echo "exported_symbols: $(printf '%s\n' "$actual" | wc -l) functions, as expected"
