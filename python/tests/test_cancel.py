"""te-rs's extension on the engine object (issue 28): cancel_batch,
cancel_transfer, set_batch_deadline, wait_batch (GIL released),
release_batch and get_batch_task_status. A stopped child process
(SIGSTOP) is a stalled peer: connections open, nothing is answered."""

import os
import signal
import threading
import time

CANCELED, COMPLETED, TIMEOUT = 3, 4, 5
BLOCK = 64 << 10


def _async_write(local, peer, src, dst_addr, n):
    return local.call("batch_transfer_async_write", peer.session,
                      [local.addr(src, i * BLOCK) for i in range(n)],
                      [dst_addr + i * BLOCK for i in range(n)], [BLOCK] * n)


def _stalled(local, peer, n):
    src, _ = local.alloc("numpy", n * BLOCK)
    dst, dst_addr = peer.alloc("numpy", n * BLOCK)
    # Fetch the descriptor now: a stopped peer answers no handshake.
    assert local.call("get_first_buffer_address", peer.session) == dst_addr
    os.kill(peer.p.pid, signal.SIGSTOP)
    # kill() returns before every thread stopped: wait until the kernel
    # reports the process stopped, so no request is served after this.
    end = time.monotonic() + 30
    while _state(peer.p.pid) != "T":
        assert time.monotonic() < end, "the peer did not stop"
        time.sleep(0.001)
    return src, dst_addr


def _state(pid):
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_wait_sleeps_without_the_gil_then_cancel_ends_every_task(local, te_rs_child):
    src, dst_addr = _stalled(local, te_rs_child, 8)
    try:
        bid = _async_write(local, te_rs_child, src, dst_addr, 8)
        assert bid
        result = []
        t = threading.Thread(target=lambda: result.append(local.call("wait_batch", bid, 300)))
        start = time.monotonic()
        t.start()
        spins = 0
        while t.is_alive() and time.monotonic() - start < 30:
            spins += 1
        t.join()
        assert result == [1], "the batch cannot end while the peer is stopped"
        assert time.monotonic() - start >= 0.3
        assert spins > 10000, "only %d loop turns while wait_batch slept" % spins
        assert local.call("cancel_batch", bid, 10000) == 0
        assert local.call("get_batch_task_status", bid) == [CANCELED] * 8
    finally:
        os.kill(te_rs_child.p.pid, signal.SIGCONT)
    assert local.call("release_batch", bid) == 0
    assert local.call("release_batch", bid) == -1
    assert local.call("wait_batch", bid, 0) == -1


def test_a_deadline_times_out_a_stalled_batch(local, te_rs_child):
    src, dst_addr = _stalled(local, te_rs_child, 16)
    try:
        bid = _async_write(local, te_rs_child, src, dst_addr, 16)
        start = time.monotonic()
        assert local.call("set_batch_deadline", bid, 100) == 0
        assert local.call("wait_batch", bid, 30000) == 0
        took = time.monotonic() - start
        assert local.call("get_batch_task_status", bid) == [TIMEOUT] * 16
        assert 0.1 <= took < 10, took
    finally:
        os.kill(te_rs_child.p.pid, signal.SIGCONT)
    assert local.call("release_batch", bid) == 0


def test_cancel_one_task_and_wait_for_the_rest(local, te_rs_child):
    src, _ = local.alloc("numpy", 4 * BLOCK)
    dst, dst_addr = te_rs_child.alloc("numpy", 4 * BLOCK)
    local.fill(src, 7, 0, 4 * BLOCK)
    bid = _async_write(local, te_rs_child, src, dst_addr, 4)
    assert local.call("wait_batch", bid) == 0
    assert local.call("get_batch_task_status", bid) == [COMPLETED] * 4
    # A task that ended keeps its state when cancelled afterwards.
    assert local.call("cancel_transfer", bid, 2, 1000) == 0
    assert local.call("get_batch_task_status", bid) == [COMPLETED] * 4
    assert local.call("cancel_transfer", bid, 9, 1000) == -1
    assert te_rs_child.check(dst, 7, 0, 4 * BLOCK) == -1
    assert local.call("transfer_check_status", bid) == 1


def test_releasing_batches_in_flight_keeps_the_engine_usable(local, te_rs_child):
    n = int(os.environ.get("TE_CANCEL_PY_RELEASES", "500"))
    src, _ = local.alloc("numpy", 4 * BLOCK)
    dst, dst_addr = te_rs_child.alloc("numpy", 4 * BLOCK)
    local.fill(src, 3, 0, 4 * BLOCK)
    for _ in range(n):
        bid = _async_write(local, te_rs_child, src, dst_addr, 4)
        assert bid and local.call("release_batch", bid) == 0
    assert local.call("transfer_sync_write", te_rs_child.session, local.addr(src),
                      dst_addr, 4 * BLOCK) == 0
    assert te_rs_child.check(dst, 3, 0, 4 * BLOCK) == -1
