"""One `mooncake.engine.TransferEngine` and its buffers, usable in-process
(`LocalPeer`) or as a child process driven by JSON lines (`python peer.py`),
so the same test sequences run against te-rs's module and upstream's.

Standard library only (numpy when present): it also runs in a virtualenv
that holds upstream's wheel instead of te-rs.
"""

import ctypes
import json
import random
import struct
import sys
import time

import mooncake.engine
from mooncake.engine import TransferEngine, TransferNotify, TransferOpcode

try:
    import numpy
except ImportError:  # pragma: no cover - the test venvs install numpy
    numpy = None


PAGE = 4096


def pattern(seed, length):
    """Seeded bytes for (seed, length). Every 4 KiB page starts with its own
    index, so a page that lands in the wrong place never matches."""
    base = random.Random(seed * 1000003 + length).randbytes(min(length, 1 << 20) + PAGE)
    span = len(base) - PAGE
    pages = []
    for i in range((length + PAGE - 1) // PAGE):
        o = (i * 4099) % span if span > 0 else 0
        tag = struct.pack("<Q", (i * 2654435761 + seed) & 0xFFFFFFFFFFFFFFFF)
        pages.append(tag + base[o + 8:o + PAGE])
    return b"".join(pages)[:length]


class LocalPeer:
    """An engine plus named buffers (bytearray, numpy or managed)."""

    def __init__(self):
        self.engine = TransferEngine()
        self.bufs = {}  # id -> (address, size, keepalive)
        self.session = None

    # -- setup ---------------------------------------------------------------
    def backend(self):
        """"te-rs" for te-rs's module, "upstream" for Mooncake's own."""
        return getattr(mooncake.engine, "BACKEND", "upstream")

    def start(self, metadata="P2PHANDSHAKE", protocol="tcp", device="", host="127.0.0.1",
              metadata_type=None):
        if metadata_type is None:
            ret = self.engine.initialize(host, metadata, protocol, device)
        else:
            ret = self.engine.initialize_ext(host, metadata, protocol, device, metadata_type)
        if ret != 0:
            raise RuntimeError("initialize returned %d" % ret)
        # P2PHANDSHAKE peers are named host:rpc_port; store modes by host name.
        if metadata == "P2PHANDSHAKE":
            self.session = "%s:%d" % (host, self.engine.get_rpc_port())
        else:
            self.session = host
        return self.session

    def alloc(self, kind, size, register="single"):
        """A zeroed buffer of `size` bytes; returns (id, address)."""
        if kind == "bytearray":
            keep = bytearray(size)
            addr = ctypes.addressof((ctypes.c_char * size).from_buffer(keep))
        elif kind == "numpy":
            keep = numpy.zeros(size, dtype=numpy.uint8)
            addr = keep.ctypes.data
        elif kind == "managed":
            addr = self.engine.allocate_managed_buffer(size)
            if addr == 0:
                raise RuntimeError("allocate_managed_buffer(%d) returned 0" % size)
            keep = None
            self.engine.write_bytes_to_buffer(addr, bytes(size), size)
        else:
            raise ValueError(kind)
        bid = len(self.bufs)
        self.bufs[bid] = (addr, size, keep)
        if register == "single":
            ret = self.engine.register_memory(addr, size)
            if ret != 0:
                raise RuntimeError("register_memory returned %d" % ret)
        return bid, addr

    def batch_register(self, ids):
        addrs = [self.bufs[i][0] for i in ids]
        return self.engine.batch_register_memory(addrs, [self.bufs[i][1] for i in ids])

    def addr(self, bid, off=0):
        return self.bufs[bid][0] + off

    def _view(self, bid):
        addr, size, keep = self.bufs[bid]
        if keep is None:
            return None
        return memoryview(keep).cast("B")

    # -- data ----------------------------------------------------------------
    def fill(self, bid, seed, off, length):
        data = pattern(seed, length)
        view = self._view(bid)
        if view is None:
            self.engine.write_bytes_to_buffer(self.addr(bid, off), data, length)
        else:
            view[off:off + length] = data

    def zero(self, bid):
        size = self.bufs[bid][1]
        view = self._view(bid)
        if view is None:
            self.engine.write_bytes_to_buffer(self.addr(bid), bytes(size), size)
        else:
            view[:] = bytes(size)

    def read(self, bid, off, length):
        view = self._view(bid)
        if view is None:
            return self.engine.read_bytes_from_buffer(self.addr(bid, off), length)
        return bytes(view[off:off + length])

    def check(self, bid, seed, off, length):
        """Index of the first byte that differs from the pattern, or -1."""
        want, view = pattern(seed, length), self._view(bid)
        if view is not None and view[off:off + length] == want:
            return -1
        got = self.read(bid, off, length)
        if got == want:
            return -1
        return next(i for i in range(length) if got[i] != want[i])

    def check_zero(self, bid, off, length):
        got = self.read(bid, off, length)
        return -1 if got == bytes(length) else next(i for i, b in enumerate(got) if b)

    # -- engine calls --------------------------------------------------------
    def call(self, method, *args, **kwargs):
        return getattr(self.engine, method)(*args, **kwargs)

    def opcode(self, name):
        return getattr(TransferOpcode, name)

    def note(self, name, msg):
        return TransferNotify(name, msg)

    def initialize_result(self, protocol, metadata="P2PHANDSHAKE"):
        """What `initialize` returns for `protocol` on a fresh engine."""
        return TransferEngine().initialize("127.0.0.1", metadata, protocol, "")

    def local_topology(self, device_name=None):
        """`get_local_topology()` parsed (the text's layout differs)."""
        e = TransferEngine()
        text = e.get_local_topology() if device_name is None else e.get_local_topology(device_name)
        return json.loads(text)

    def opcode_facts(self):
        """How `TransferOpcode` behaves, as data two interpreters can compare."""
        T = TransferOpcode

        def attempt(fn):
            try:
                return ["ok", repr(fn())]
            except Exception as e:
                return ["raises", type(e).__name__]
        r, w = T.Read, T.Write
        return {
            "names": [r.name, w.name], "values": [r.value, w.value],
            "value_types": [type(r.value).__name__, type(r.name).__name__],
            "members": {k: [v.name, int(v)] for k, v in T.__members__.items()},
            "members_type": type(T.__members__).__name__,
            "int": [int(r), int(w)], "index": [[10, 11][r], [10, 11][w]],
            "float": float(w), "hash_eq_value": [hash(r) == 0, hash(w) == 1],
            "dict_key": {r: "r", w: "w"}[T.Write],
            "repr": [repr(r), repr(w)], "str": [str(r), str(w)],
            "eq": [r == T.Read, r == w, r != w, r == T(0), w == T(1)],
            "eq_int": [r == 0, w == 1, r != 0], "bool": [bool(r), bool(w)],
            "order": [r < w, w > r, r <= r, sorted([w, r]) == [r, w]],
            "order_int": attempt(lambda: w > 0),
            "from_int": [T(0) == r, T(1) == w, T(True) == w],
            "from_name": attempt(lambda: T("Read")),
            "add": attempt(lambda: w + 1),
            "pickle": __import__("pickle").loads(__import__("pickle").dumps(w)) == w,
            "module_level": [mooncake.engine.Read == r, mooncake.engine.Write == w],
            "type": [T.__name__, T.__module__, type(r) is T],
        }

    def notifies(self, want, timeout=10.0):
        """Notifications received, waiting until `want` of them arrived."""
        got, deadline = [], time.monotonic() + timeout
        while len(got) < want and time.monotonic() < deadline:
            got += [[n.name, n.msg] for n in self.engine.get_notifies()]
            time.sleep(0.01)
        return got


def _decode(v):
    """JSON argument markers: opcodes and notifies cross the pipe by name."""
    if isinstance(v, dict) and "$opcode" in v:
        return getattr(TransferOpcode, v["$opcode"])
    if isinstance(v, dict) and "$notify" in v:
        return TransferNotify(*v["$notify"])
    return v


def serve():
    """Serve one LocalPeer over stdin/stdout, one JSON object per line."""
    peer = LocalPeer()
    print(json.dumps({"ok": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "quit":
            print(json.dumps({"ok": True}), flush=True)
            break
        try:
            args = [_decode(a) for a in req.get("args", [])]
            kwargs = {k: _decode(v) for k, v in req.get("kwargs", {}).items()}
            result = getattr(peer, req["op"])(*args, **kwargs)
            if isinstance(result, bytes):
                result = result.hex()
            print(json.dumps({"ok": True, "result": result}), flush=True)
        except Exception as e:  # reported to the driver, which fails the test
            print(json.dumps({"ok": False, "error": "%s: %s" % (type(e).__name__, e)}), flush=True)


if __name__ == "__main__":
    serve()
