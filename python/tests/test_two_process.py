"""te-rs to te-rs in two processes over P2PHANDSHAKE + TCP: the vLLM and
SGLang connector sequences, with this process as initiator and as target."""

from sequences import sglang_sequence, vllm_sequence


def test_vllm_sequence_local_initiator(local, te_rs_child):
    vllm_sequence(local, te_rs_child)


def test_vllm_sequence_child_initiator(local, te_rs_child):
    vllm_sequence(te_rs_child, local)


def test_sglang_sequence_local_initiator(local, te_rs_child):
    sglang_sequence(local, te_rs_child)


def test_sglang_sequence_child_initiator(local, te_rs_child):
    sglang_sequence(te_rs_child, local)


def test_large_batch_both_ways(local, te_rs_child):
    """One batch of 64 x 1 MiB each way (several TCP lanes, many slices)."""
    n, size = 64, 1 << 20
    src, _ = local.alloc("numpy", n * size)
    dst, dst_addr = te_rs_child.alloc("numpy", n * size)
    local.fill(src, 77, 0, n * size)
    ret = local.call("batch_transfer_sync_write", te_rs_child.session,
                     [local.addr(src, i * size) for i in range(n)],
                     [dst_addr + (n - 1 - i) * size for i in range(n)], [size] * n)
    assert ret == 0
    for i in range(n):
        want = local.read(src, i * size, size)
        assert te_rs_child.read(dst, (n - 1 - i) * size, size) == want, "block %d" % i
    local.zero(src)
    ret = local.call("batch_transfer_sync_read", te_rs_child.session,
                     [local.addr(src, i * size) for i in range(n)],
                     [dst_addr + (n - 1 - i) * size for i in range(n)], [size] * n)
    assert ret == 0
    assert local.check(src, 77, 0, n * size) == -1


def test_transfer_to_own_segment(local):
    """An engine may name itself as the target (upstream's local segment)."""
    a, a_addr = local.alloc("bytearray", 64 << 10)
    b, b_addr = local.alloc("numpy", 64 << 10)
    local.fill(a, 8, 0, 64 << 10)
    assert local.call("transfer_sync_write", local.session, a_addr, b_addr, 64 << 10) == 0
    assert local.check(b, 8, 0, 64 << 10) == -1
    assert local.call("get_first_buffer_address", local.session) == a_addr
