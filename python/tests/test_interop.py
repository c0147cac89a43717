"""te-rs's mooncake.engine against upstream's (PyPI wheel, its own
virtualenv, a child process), both directions, P2PHANDSHAKE + TCP."""

import pytest

from sequences import sglang_sequence, vllm_sequence

pytestmark = pytest.mark.interop


def test_vllm_te_rs_to_upstream(local, upstream_child):
    vllm_sequence(local, upstream_child)


def test_vllm_upstream_to_te_rs(local, upstream_child):
    vllm_sequence(upstream_child, local)


def test_sglang_te_rs_to_upstream(local, upstream_child):
    sglang_sequence(local, upstream_child)


def test_sglang_upstream_to_te_rs(local, upstream_child):
    sglang_sequence(upstream_child, local)


def test_out_of_range_both_ways(local, upstream_child):
    """A write past the end of the peer's buffer fails with -1 on both
    engines and leaves the buffer untouched; the pair works afterwards."""
    size = 64 << 10
    for ini, tgt in ((local, upstream_child), (upstream_child, local)):
        s, _ = ini.alloc("bytearray", size)
        d, d_addr = tgt.alloc("bytearray", size)
        ini.fill(s, 9, 0, size)
        assert ini.call("transfer_sync_write", tgt.session, ini.addr(s), d_addr + 4096, size) == -1
        assert tgt.check_zero(d, 0, size) == -1
        assert ini.call("transfer_sync_write", tgt.session, ini.addr(s), d_addr, size) == 0
        assert tgt.check(d, 9, 0, size) == -1
