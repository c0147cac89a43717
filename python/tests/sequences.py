"""The call sequences of vLLM's and SGLang's Mooncake connectors, run between
an initiator and a target peer (peer.LocalPeer or remote.RemotePeer, te-rs or
upstream). Every byte moved is checked on the side it landed on."""

import time

KiB, MiB = 1 << 10, 1 << 20


def _ok(ret, what):
    assert ret == 0, "%s returned %r" % (what, ret)


def _same(peer, bid, seed, off, length, what):
    bad = peer.check(bid, seed, off, length)
    assert bad == -1, "%s: first wrong byte at %d of %d" % (what, bad, length)


def vllm_sequence(ini, tgt, layers=4, layer_size=256 * KiB):
    """vLLM: batch_register_memory of the KV layers on both sides, the
    prefiller writes blocks with batch_transfer_sync_write to
    `host:rpc_port`; then reads back, async batches and a notification."""
    session = tgt.session
    kinds = ["numpy", "bytearray"]
    dst = [tgt.alloc(kinds[i % 2], layer_size, register=None)[0] for i in range(layers)]
    src = [ini.alloc(kinds[(i + 1) % 2], layer_size, register=None)[0] for i in range(layers)]
    _ok(tgt.batch_register(dst), "target batch_register_memory")
    _ok(ini.batch_register(src), "initiator batch_register_memory")

    # Whole layers, then scattered blocks of odd sizes at odd offsets.
    for i, b in enumerate(src):
        ini.fill(b, 100 + i, 0, layer_size)
    ret = ini.call("batch_transfer_sync_write", session, [ini.addr(b) for b in src],
                   [tgt.addr(b) for b in dst], [layer_size] * layers)
    _ok(ret, "batch_transfer_sync_write (layers)")
    for i, b in enumerate(dst):
        _same(tgt, b, 100 + i, 0, layer_size, "layer %d" % i)

    blocks = [(0, 1), (1, 4095), (4096 + 3, 64 * KiB + 5), (200 * KiB, 56 * KiB)]
    for j, (off, n) in enumerate(blocks):
        ini.fill(src[j % layers], 200 + j, off, n)
    ret = ini.call("batch_transfer_sync_write", session,
                   [ini.addr(src[j % layers], off) for j, (off, n) in enumerate(blocks)],
                   [tgt.addr(dst[(j + 1) % layers], off) for j, (off, n) in enumerate(blocks)],
                   [n for off, n in blocks])
    _ok(ret, "batch_transfer_sync_write (blocks)")
    for j, (off, n) in enumerate(blocks):
        _same(tgt, dst[(j + 1) % layers], 200 + j, off, n, "block %d" % j)

    # Read every layer back into zeroed local memory.
    for i, b in enumerate(dst):
        tgt.fill(b, 300 + i, 0, layer_size)
    for b in src:
        ini.zero(b)
    ret = ini.call("batch_transfer_sync_read", session, [ini.addr(b) for b in src],
                   [tgt.addr(b) for b in dst], [layer_size] * layers)
    _ok(ret, "batch_transfer_sync_read")
    for i, b in enumerate(src):
        _same(ini, b, 300 + i, 0, layer_size, "read layer %d" % i)

    # Async write + blocking status, async read + polling.
    for i, b in enumerate(src):
        ini.fill(b, 400 + i, 0, layer_size)
    bid = ini.call("batch_transfer_async_write", session, [ini.addr(b) for b in src],
                   [tgt.addr(b) for b in dst], [layer_size] * layers)
    assert bid != 0, "batch_transfer_async_write returned 0"
    _ok(ini.call("get_batch_transfer_status", [bid]), "get_batch_transfer_status")
    for i, b in enumerate(dst):
        _same(tgt, b, 400 + i, 0, layer_size, "async layer %d" % i)
    for b in src:
        ini.zero(b)
    ids = [ini.call("batch_transfer_async", session, [ini.addr(src[i])], [tgt.addr(dst[i])],
                    [layer_size], ini.opcode("Read")) for i in range(layers)]
    assert all(ids), "batch_transfer_async returned 0: %r" % ids
    _ok(ini.call("get_batch_transfer_status", ids), "get_batch_transfer_status (%d)" % layers)
    for i, b in enumerate(src):
        _same(ini, b, 400 + i, 0, layer_size, "async read layer %d" % i)

    # A write that carries a notification (quotes, newline, UTF-8 included).
    ini.fill(src[0], 500, 0, 8 * KiB)
    note = ini.note("kv-done", 'req "7"\n\tüñï €')
    ret = ini.call("transfer_sync", session, ini.addr(src[0]), tgt.addr(dst[0]), 8 * KiB,
                   ini.opcode("Write"), notify=note)
    _ok(ret, "transfer_sync with notify")
    _same(tgt, dst[0], 500, 0, 8 * KiB, "notified write")
    got = tgt.notifies(1)
    assert got == [["kv-done", 'req "7"\n\tüñï €']], "notifies: %r" % got
    ret = ini.call("batch_transfer_sync", session, [ini.addr(src[1])], [tgt.addr(dst[1])],
                   [4 * KiB], ini.opcode("Read"), notify=ini.note("n2", "read"))
    _ok(ret, "batch_transfer_sync (read) with notify")
    assert tgt.notifies(1) == [["n2", "read"]]

    _ok(tgt.call("batch_unregister_memory", [tgt.addr(b) for b in dst]), "batch_unregister_memory")
    _ok(ini.call("batch_unregister_memory", [ini.addr(b) for b in src]), "batch_unregister_memory")


def sglang_sequence(ini, tgt, size=1 * MiB):
    """SGLang: register_memory per buffer, `host:rpc_port` session ids,
    transfer_sync_write / batch_transfer_sync_write, transfer_submit_write
    polled with transfer_check_status, send_probe; plus managed buffers."""
    session = tgt.session
    d_np, d_np_addr = tgt.alloc("numpy", size)
    d_ba, d_ba_addr = tgt.alloc("bytearray", size)
    s_np, _ = ini.alloc("numpy", size)
    s_ba, _ = ini.alloc("bytearray", size)

    assert ini.call("get_first_buffer_address", session) == d_np_addr
    _ok(ini.call("send_probe", session), "send_probe")

    ini.fill(s_np, 1, 0, size)
    _ok(ini.call("transfer_sync_write", session, ini.addr(s_np), d_np_addr, size),
        "transfer_sync_write")
    _same(tgt, d_np, 1, 0, size, "transfer_sync_write")

    ini.fill(s_ba, 2, 0, size)
    halves = size // 2
    ret = ini.call("batch_transfer_sync_write", session,
                   [ini.addr(s_ba, halves), ini.addr(s_ba)],
                   [d_ba_addr, d_ba_addr + halves], [halves, halves])
    _ok(ret, "batch_transfer_sync_write")
    want = ini.read(s_ba, halves, halves) + ini.read(s_ba, 0, halves)
    assert tgt.read(d_ba, 0, size) == want, "swapped halves differ"

    ini.fill(s_np, 3, 0, 300 * KiB)
    bid = ini.call("transfer_submit_write", session, ini.addr(s_np), d_ba_addr + 7, 300 * KiB)
    assert bid != 0, "transfer_submit_write returned 0"
    deadline, status = time.monotonic() + 30, 0
    while status == 0 and time.monotonic() < deadline:
        status = ini.call("transfer_check_status", bid)
    assert status == 1, "transfer_check_status ended %r" % status
    _same(tgt, d_ba, 3, 7, 300 * KiB, "transfer_submit_write")

    tgt.fill(d_np, 4, 0, size)
    ini.zero(s_ba)
    _ok(ini.call("transfer_sync_read", session, ini.addr(s_ba), d_np_addr, size),
        "transfer_sync_read")
    _same(ini, s_ba, 4, 0, size, "transfer_sync_read")

    # Managed buffers (upstream's allocator) as the source of a write.
    m, m_addr = ini.alloc("managed", 64 * KiB, register=None)
    ini.fill(m, 5, 0, 64 * KiB)
    _ok(ini.call("transfer_sync_write", session, m_addr, d_np_addr, 64 * KiB),
        "transfer_sync_write from a managed buffer")
    _same(tgt, d_np, 5, 0, 64 * KiB, "managed buffer write")
    _ok(ini.call("free_managed_buffer", m_addr, 64 * KiB), "free_managed_buffer")

    for peer, bid in ((tgt, d_np), (tgt, d_ba), (ini, s_np), (ini, s_ba)):
        _ok(peer.call("unregister_memory", peer.addr(bid)), "unregister_memory")
