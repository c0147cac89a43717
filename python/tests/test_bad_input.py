"""Bad input returns upstream's error value or raises a clear Python
exception; the interpreter survives every case and the engine keeps working."""

import ctypes
import time

import pytest

from mooncake.engine import TransferEngine, TransferNotify, TransferOpcode

KiB = 1 << 10
ERR_INVALID_ARGUMENT, ERR_ADDRESS_NOT_REGISTERED, ERR_ADDRESS_OVERLAPPED = -1, -3, -7
ERR_METADATA, ERR_NOT_IMPLEMENTED = -200, -303


@pytest.fixture
def pair(local, te_rs_child):
    src, src_addr = local.alloc("bytearray", 64 * KiB)
    dst, dst_addr = te_rs_child.alloc("bytearray", 64 * KiB)
    local.fill(src, 1, 0, 64 * KiB)
    return local, te_rs_child, (src, src_addr), (dst, dst_addr)


def still_works(local, child, src_addr, dst, dst_addr):
    assert local.call("transfer_sync_write", child.session, src_addr, dst_addr, 64 * KiB) == 0
    assert child.check(dst, 1, 0, 64 * KiB) == -1


def test_not_initialized_raises():
    e = TransferEngine()
    for call in (lambda: e.get_rpc_port(),
                 lambda: e.transfer_sync_write("127.0.0.1:1", 1, 2, 3),
                 lambda: e.register_memory(1, 2),
                 lambda: e.get_notifies()):
        with pytest.raises(RuntimeError, match="initialize"):
            call()


def test_initialize_refusals(local):
    assert local.call("initialize", "127.0.0.1", "P2PHANDSHAKE", "tcp", "") == -1  # twice
    e = TransferEngine()
    assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "xgmi", "") == -1  # as upstream
    assert e.initialize("127.0.0.1", "bogus://x", "tcp", "") == -1
    assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", None) == 0  # None device: all
    x = TransferEngine()
    assert x.initialize_ext("127.0.0.1", "P2PHANDSHAKE", "rdma", "", "") == 0
    assert x.get_rpc_port() > 0
    assert TransferEngine().initialize_ext("n", "h:1", "tcp", "", "bogus") == -1


def test_unknown_segment(local):
    _, a = local.alloc("bytearray", 4 * KiB)
    dead = "127.0.0.1:1"
    assert local.call("transfer_sync_write", dead, a, a, 4 * KiB) == -1
    assert local.call("transfer_sync_read", dead, a, a, 4 * KiB) == -1
    assert local.call("batch_transfer_sync_write", dead, [a], [a], [4 * KiB]) == -1
    assert local.call("batch_transfer_async_write", dead, [a], [a], [4 * KiB]) == 0
    assert local.call("transfer_submit_write", dead, a, a, 4 * KiB) == 0
    assert local.call("get_first_buffer_address", dead) == 0
    assert local.call("send_probe", dead) < 0
    assert local.call("send_probe", "no-such-host.invalid:5") < 0


def test_out_of_range_remote_address(pair):
    local, child, (src, src_addr), (dst, dst_addr) = pair
    s = child.session
    assert local.call("transfer_sync_write", s, src_addr, dst_addr + 4 * KiB, 64 * KiB) == -1
    assert local.call("transfer_sync_read", s, src_addr, dst_addr - 1, 16) == -1
    assert local.call("transfer_sync_write", s, src_addr, 8, 16) == -1
    assert child.check_zero(dst, 0, 64 * KiB) == -1
    bid = local.call("batch_transfer_async_write", s, [src_addr], [dst_addr + 60 * KiB], [8 * KiB])
    assert bid != 0
    assert local.call("get_batch_transfer_status", [bid]) == -1
    bid = local.call("transfer_submit_write", s, src_addr, dst_addr + 63 * KiB, 2 * KiB)
    status, deadline = 0, time.monotonic() + 30
    while status == 0 and time.monotonic() < deadline:
        status = local.call("transfer_check_status", bid)
    assert status == -1
    assert local.call("transfer_check_status", bid) == -1  # freed: now unknown
    still_works(local, child, src_addr, dst, dst_addr)


def test_bad_local_buffers(pair):
    local, child, (src, src_addr), (dst, dst_addr) = pair
    s = child.session
    unregistered = bytearray(4 * KiB)
    addr = ctypes.addressof((ctypes.c_char * len(unregistered)).from_buffer(unregistered))
    assert local.call("transfer_sync_write", s, addr, dst_addr, 4 * KiB) == -1
    assert local.call("transfer_sync_write", s, 0, dst_addr, 4 * KiB) == -1
    assert local.call("transfer_sync_read", s, src_addr + 60 * KiB, dst_addr, 8 * KiB) == -1
    assert local.call("transfer_sync_write", s, 2**64 - 8, dst_addr, 16) == -1
    assert local.call("batch_transfer_sync_write", s, [src_addr, src_addr], [dst_addr], [1]) == -1
    assert local.call("batch_transfer_async_read", s, [src_addr], [], [1]) == 0
    assert child.check_zero(dst, 0, 64 * KiB) == -1
    still_works(local, child, src_addr, dst, dst_addr)


def test_wrong_types_raise(pair):
    local, child, (src, src_addr), (dst, dst_addr) = pair
    e, s = local.engine, child.session
    with pytest.raises(TypeError):
        e.transfer_sync_write(123, src_addr, dst_addr, 16)
    with pytest.raises(TypeError):
        e.transfer_sync_write(s, "0x10", dst_addr, 16)
    with pytest.raises(TypeError):
        e.transfer_sync_write(s, 1.5, dst_addr, 16)
    with pytest.raises(OverflowError):
        e.transfer_sync_write(s, -1, dst_addr, 16)
    with pytest.raises(TypeError):
        e.batch_transfer_sync_write(s, src_addr, [dst_addr], [16])
    with pytest.raises(TypeError):
        e.batch_transfer_sync_write(s, ["a"], [dst_addr], [16])
    with pytest.raises(TypeError):
        e.transfer_sync(s, src_addr, dst_addr, 16, 1)  # an int is not a TransferOpcode
    with pytest.raises(TypeError):
        e.transfer_sync(s, src_addr, dst_addr, 16, TransferOpcode.Write, notify="x")
    with pytest.raises(TypeError):
        e.get_batch_transfer_status(7)
    with pytest.raises(TypeError):
        e.transfer_check_status(batch_id=1)  # positional-only, as upstream's arg0
    with pytest.raises(TypeError):
        TransferNotify("only-name")
    with pytest.raises(TypeError):
        e.write_bytes_to_buffer(src_addr, 12345, 4)
    still_works(local, child, src_addr, dst, dst_addr)


def test_unknown_batch_ids(local):
    assert local.call("transfer_check_status", 0) == -1
    assert local.call("transfer_check_status", 0xDEADBEEF) == -1
    assert local.call("get_batch_transfer_status", [0xDEADBEEF]) == -1
    assert local.call("get_batch_transfer_status", []) == 0


def test_memory_registration_errors(local):
    b, addr = local.alloc("bytearray", 8 * KiB, register=None)
    assert local.call("register_memory", addr, 8 * KiB) == 0
    assert local.call("register_memory", addr + 4 * KiB, 8 * KiB) == ERR_ADDRESS_OVERLAPPED
    assert local.call("register_memory", 0, 8 * KiB) == ERR_INVALID_ARGUMENT
    assert local.call("register_memory", addr, 8 * KiB, "cuda:0") == ERR_NOT_IMPLEMENTED
    assert local.call("batch_register_memory", [addr], [1, 2]) == ERR_INVALID_ARGUMENT
    assert local.call("unregister_memory", addr + 1) == ERR_ADDRESS_NOT_REGISTERED
    assert local.call("unregister_memory", addr) == 0
    assert local.call("unregister_memory", addr) == ERR_ADDRESS_NOT_REGISTERED


def test_managed_buffers_and_raw_bytes(local):
    e = local.engine
    a = e.allocate_managed_buffer(4 * KiB)
    b = e.allocate_managed_buffer(4 * KiB)
    big = e.allocate_managed_buffer(300 << 20)  # above the largest class: own region
    assert a and b and big and abs(a - b) >= 8 * KiB
    assert e.write_bytes_to_buffer(a, b"hello", 5) == 0
    assert e.write_bytes_to_buffer(a + 5, "wörld", 6) == 0
    assert e.write_bytes_to_buffer(big + (300 << 20) - 3, bytearray(b"end"), 3) == 0
    assert e.read_bytes_from_buffer(a, 11) == "hellowörld".encode()
    assert e.read_bytes_from_buffer(big + (300 << 20) - 3, 3) == b"end"
    with pytest.raises(ValueError, match="registered"):
        e.read_bytes_from_buffer(16, 10)
    with pytest.raises(ValueError, match="registered"):
        e.write_bytes_to_buffer(big + (300 << 20) - 2, b"end", 3)
    with pytest.raises(ValueError, match="bytes"):
        e.write_bytes_to_buffer(a, b"ab", 10)
    assert e.free_managed_buffer(a, 4 * KiB) == 0
    assert e.free_managed_buffer(a, 4 * KiB) == -1  # twice
    assert e.free_managed_buffer(12345, 4 * KiB) == -1
    assert e.allocate_managed_buffer(4 * KiB) == a  # reused
    assert e.free_managed_buffer(big, 300 << 20) == 0
    with pytest.raises(ValueError):
        e.read_bytes_from_buffer(big, 1)  # unregistered and unmapped


def test_unsupported_features_say_why(local):
    e = local.engine
    with pytest.raises(NotImplementedError, match="te-rs"):
        e.get_engine_ptr()
    with pytest.raises(NotImplementedError, match="te-rs"):
        e.get_engine()
    for name in ("transfer_write_on_cuda", "batch_transfer_read_on_cuda"):
        assert not hasattr(e, name)
        with pytest.raises(AttributeError, match="host memory only"):
            getattr(e, name)
    import mooncake.engine as m
    assert m.SUPPORT_CUDA is False
    with pytest.raises(AttributeError, match="not provided by te-rs"):
        m.RpcInterface
    assert e.warmup_efa_segment("x") == 0
