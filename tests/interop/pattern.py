"""Deterministic, position-dependent byte patterns for transfer verification.

pattern(seed, n) is a 1 MiB random block (seeded) rotated by a different
amount for each 1 MiB chunk, so a misplaced or repeated chunk does not match.
"""

import random

BASE = 1 << 20
_cache = {}


def _base(seed):
    b = _cache.get(seed)
    if b is None:
        b = random.Random(seed).randbytes(BASE)
        if len(_cache) > 8:
            _cache.clear()
        _cache[seed] = b
    return b


def pattern(seed, n):
    base = _base(seed)
    parts = []
    k = 0
    left = n
    while left > 0:
        r = (k * 40503 + seed * 7 + 1) % BASE
        chunk = base[r:] + base[:r]
        parts.append(chunk[:left] if left < BASE else chunk)
        left -= BASE
        k += 1
    return b"".join(parts)


def first_mismatch(actual, expected):
    """Offset of the first differing byte, or -1 if equal."""
    if actual == expected:
        return -1
    if len(actual) != len(expected):
        n = min(len(actual), len(expected))
        if actual[:n] == expected[:n]:
            return n
    lo, hi = 0, min(len(actual), len(expected))
    # Invariant: a mismatch exists in [lo, hi).
    while hi - lo > 64:
        mid = (lo + hi) // 2
        if actual[lo:mid] != expected[lo:mid]:
            hi = mid
        else:
            lo = mid
    for i in range(lo, hi):
        if actual[i] != expected[i]:
            return i
    return hi
