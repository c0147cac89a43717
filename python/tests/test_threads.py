"""The GIL is released while a transfer waits, and one engine serves many
Python threads at once."""

import os
import signal
import threading
import time

MiB = 1 << 20


def test_gil_released_while_waiting(local, te_rs_child):
    size = 128 * MiB  # far more than loopback socket buffers hold
    src, _ = local.alloc("numpy", size)
    dst, dst_addr = te_rs_child.alloc("numpy", size)
    local.fill(src, 11, 0, size)
    # Fetch the peer's descriptor now: a stopped peer answers no handshake.
    assert local.call("get_first_buffer_address", te_rs_child.session) == dst_addr
    result = []
    os.kill(te_rs_child.p.pid, signal.SIGSTOP)
    try:
        t = threading.Thread(target=lambda: result.append(local.call(
            "transfer_sync_write", te_rs_child.session, local.addr(src), dst_addr, size)))
        t.start()
        spins, end = 0, time.monotonic() + 0.5
        while time.monotonic() < end:
            spins += 1
        # The transfer cannot finish while the peer is stopped, yet this
        # thread ran: the waiting call does not hold the GIL.
        assert t.is_alive() and not result
        assert spins > 10000, "only %d loop turns while the transfer waited" % spins
    finally:
        os.kill(te_rs_child.p.pid, signal.SIGCONT)
    t.join(60)
    assert result == [0]
    assert te_rs_child.check(dst, 11, 0, size) == -1


def test_many_threads_one_engine(local, te_rs_child):
    threads, rounds, block = 8, 10, 256 << 10
    src, _ = local.alloc("numpy", threads * block)
    back, _ = local.alloc("bytearray", threads * block)
    dst, dst_addr = te_rs_child.alloc("numpy", threads * block)
    s, errors = te_rs_child.session, []

    def worker(i):
        try:
            off = i * block
            for r in range(rounds):
                local.fill(src, 1000 * i + r, off, block)
                if r % 2:
                    bid = local.call("batch_transfer_async_write", s, [local.addr(src, off)],
                                     [dst_addr + off], [block])
                    assert bid and local.call("get_batch_transfer_status", [bid]) == 0
                else:
                    assert local.call("transfer_sync_write", s, local.addr(src, off),
                                      dst_addr + off, block) == 0
                assert local.call("transfer_sync_read", s, local.addr(back, off),
                                  dst_addr + off, block) == 0
                assert local.check(back, 1000 * i + r, off, block) == -1, (i, r)
        except Exception as e:  # collected and asserted below
            errors.append((i, repr(e)))

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not errors, errors
    for i in range(threads):
        assert te_rs_child.check(dst, 1000 * i + rounds - 1, i * block, block) == -1


def test_stalled_peer_times_out_then_recovers(request):
    """A peer that stops answering: the sync call ends -1 within
    MC_TRANSFER_TIMEOUT (5 s here), never hangs, and the pair works again
    once the peer is back (the abandoned batch is freed later)."""
    from conftest import _log, child_env
    from remote import RemotePeer
    import sys

    size = 128 * MiB
    ini = RemotePeer(sys.executable, env=child_env(MC_TRANSFER_TIMEOUT="5"),
                     log_path=_log(request, "initiator"))
    tgt = RemotePeer(sys.executable, env=child_env(), log_path=_log(request, "target"))
    try:
        ini.start()
        session = tgt.start()
        src, _ = ini.alloc("numpy", size)
        dst, dst_addr = tgt.alloc("numpy", size)
        ini.fill(src, 21, 0, size)
        assert ini.call("get_first_buffer_address", session) == dst_addr
        os.kill(tgt.p.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            assert ini.call("transfer_sync_write", session, ini.addr(src), dst_addr, size) == -1
            took = time.monotonic() - t0
            assert 4.5 < took < 30, "returned after %.1f s" % took
            # Polled: 0 while within the deadline, then -2 (TIMEOUT), not freed.
            bid = ini.call("transfer_submit_write", session, ini.addr(src), dst_addr, size)
            assert bid != 0
            status, t0 = 0, time.monotonic()
            while status == 0 and time.monotonic() - t0 < 30:
                status = ini.call("transfer_check_status", bid)
            assert status == -2 and time.monotonic() - t0 > 4.5, status
        finally:
            os.kill(tgt.p.pid, signal.SIGCONT)
        # Once the peer is back the late batch completes and reads 1.
        deadline = time.monotonic() + 60
        while status == -2 and time.monotonic() < deadline:
            status = ini.call("transfer_check_status", bid)
        assert status == 1, status
        assert ini.call("transfer_sync_write", session, ini.addr(src), dst_addr, size) == 0
        assert tgt.check(dst, 21, 0, size) == -1
    finally:
        ini.close()
        tgt.close()
