"""One transfer engine in its own process, driven by JSON-line commands.

Usage: peer.py mooncake|te-rs [METADATA [LOCAL_NAME]]
METADATA defaults to P2PHANDSHAKE (the segment name is then 127.0.0.1:<rpc
port>); with a store URL the segment name is LOCAL_NAME.

Commands arrive one per line on stdin; each gets exactly one JSON reply line
on the original stdout. fd 1 is redirected to stderr before any engine is
loaded so that library output cannot corrupt the reply stream.
"""

import ctypes
import json
import mmap
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pattern import first_mismatch, pattern  # noqa: E402

_reply_fd = os.dup(1)
os.dup2(2, 1)
REPLY = os.fdopen(_reply_fd, "w", buffering=1)


class Buffers:
    """Anonymous mmaps owned by this process (page aligned, zero filled)."""

    def __init__(self):
        self.maps = {}

    def alloc(self, size):
        m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
        self.maps[addr] = m
        return addr


class MooncakePeer:
    """The upstream C++ engine through its pybind11 module."""

    kind = "mooncake"

    def __init__(self, metadata, local_name):
        from mooncake.engine import TransferEngine, TransferNotify, TransferOpcode
        self.TransferNotify = TransferNotify
        self.Op = TransferOpcode
        self.te = TransferEngine()
        proto = os.environ.get("PEER_PROTOCOL", "tcp")
        devices = os.environ.get("PEER_DEVICES", "")
        rc = self.te.initialize(local_name, metadata, proto, devices)
        if rc != 0:
            raise RuntimeError("mooncake initialize(%s, %s) rc=%d" % (local_name, metadata, rc))
        if metadata == "P2PHANDSHAKE":
            self.name = "%s:%d" % (local_name, self.te.get_rpc_port())
        else:
            self.name = local_name

    def register(self, addr, size):
        rc = self.te.register_memory(addr, size, "cpu:0")
        if rc != 0:
            raise RuntimeError("register_memory rc=%d" % rc)

    def transfer(self, op, segment, reqs, notify=None):
        """reqs: [(local, remote, len)]. Returns True when all succeeded."""
        opcode = self.Op.Write if op == "write" else self.Op.Read
        if notify is not None:
            # Bytes (pybind11 takes them for std::string) so that lone
            # surrogates (surrogateescape) send bytes that are not UTF-8.
            n = self.TransferNotify(*(x.encode("utf-8", "surrogateescape") for x in notify))
            if len(reqs) == 1:
                local, remote, ln = reqs[0]
                return self.te.transfer_sync(segment, local, remote, ln, opcode, n) == 0
            rc = self.te.batch_transfer_sync(segment, [r[0] for r in reqs],
                                             [r[1] for r in reqs], [r[2] for r in reqs],
                                             opcode, n)
            return rc == 0
        if len(reqs) == 1:
            local, remote, ln = reqs[0]
            fn = self.te.transfer_sync_write if op == "write" else self.te.transfer_sync_read
            return fn(segment, local, remote, ln) == 0
        fn = (self.te.batch_transfer_sync_write if op == "write"
              else self.te.batch_transfer_sync_read)
        return fn(segment, [r[0] for r in reqs], [r[1] for r in reqs],
                  [r[2] for r in reqs]) == 0

    def notify(self, segment, name, msg):
        raise RuntimeError("the Mooncake Python bindings have no genNotifyInEngine")

    def first_buffer(self, segment):
        return self.te.get_first_buffer_address(segment)

    def probe(self, segment):
        return self.te.send_probe(segment)

    def notifies(self):
        return [(n.name, n.msg) for n in self.te.get_notifies()]


class TeRsPeer:
    """te-rs through its C ABI (ctypes)."""

    kind = "te-rs"

    def __init__(self, metadata, local_name):
        import te_rs
        self.m = te_rs
        proto = os.environ.get("PEER_PROTOCOL", "tcp")
        devices = [d for d in os.environ.get("PEER_DEVICES", "").split(",") if d]
        ip = local_name if local_name[:1].isdigit() else "127.0.0.1"
        self.e = te_rs.Engine(metadata, local_name, proto, devices=devices or None, ip=ip)
        self.batches = {}
        self.finished = {}
        # P2P: getLocalIpAndPort is the segment name; stores: the given name.
        self.name = self.e.segment_name() if metadata == "P2PHANDSHAKE" else local_name
        self.segments = {}

    def register(self, addr, size):
        self.e.register(addr, size, "cpu:0")

    def _sid(self, segment):
        if segment not in self.segments:
            self.segments[segment] = self.e.open_segment(segment)
        return self.segments[segment]

    def transfer(self, op, segment, reqs, notify=None):
        sid = self._sid(segment)
        opc = self.m.OPCODE_WRITE if op == "write" else self.m.OPCODE_READ
        res = self.e.transfer([(opc, l, sid, r, n) for (l, r, n) in reqs],
                              timeout=60.0, notify=notify)
        ok = all(s == "COMPLETED" for s, _ in res)
        if ok:
            for (s, got), (_, _, n) in zip(res, reqs):
                if got != n:
                    raise RuntimeError("COMPLETED with transferred_bytes=%d, expected %d" % (got, n))
        return ok

    def submit(self, op, segment, reqs):
        """Submit without waiting; returns the batch id."""
        sid = self._sid(segment)
        opc = self.m.OPCODE_WRITE if op == "write" else self.m.OPCODE_READ
        bid = self.e.submit([(opc, l, sid, r, n) for (l, r, n) in reqs])
        self.batches[bid] = len(reqs)
        return bid

    def poll(self):
        """Status counts over all submitted batches; frees finished ones."""
        pending = {}
        for bid, n in list(self.batches.items()):
            st = self.e.statuses(bid, n)
            if all(s in ("COMPLETED", "FAILED", "TIMEOUT") for s in st):
                if self.e.free_batch(bid) == 0:
                    del self.batches[bid]
                    for s in st:
                        self.finished[s] = self.finished.get(s, 0) + 1
                    continue
            for s in st:
                pending[s] = pending.get(s, 0) + 1
        return {"open_batches": len(self.batches), "pending": pending,
                "finished": dict(self.finished)}

    def notify(self, segment, name, msg):
        rc = self.e.notify(self._sid(segment), name, msg)
        if rc != 0:
            raise RuntimeError("genNotifyInEngine rc=%d" % rc)
        return True

    def first_buffer(self, segment):
        raise RuntimeError("the C ABI exposes no segment descriptor")

    def probe(self, segment):
        raise RuntimeError("the C ABI has no probe call")

    def notifies(self):
        return self.e.get_notifies()


def serve(peer):
    bufs = Buffers()
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        op = cmd["op"]
        out = {"ok": True}
        try:
            if op == "alloc":
                addr = bufs.alloc(cmd["size"])
                if cmd.get("register", True):
                    peer.register(addr, cmd["size"])
                out["addr"] = addr
            elif op == "fill":
                ctypes.memmove(cmd["addr"], pattern(cmd["seed"], cmd["len"]), cmd["len"])
            elif op == "zero":
                ctypes.memset(cmd["addr"], 0, cmd["len"])
            elif op == "check":
                got = ctypes.string_at(cmd["addr"], cmd["len"])
                if "seed" in cmd:
                    exp = pattern(cmd["seed"], cmd["len"])
                else:
                    exp = bytes(cmd["len"])
                off = first_mismatch(got, exp)
                if off >= 0:
                    out["ok"] = False
                    out["error"] = ("mismatch at +%d: expected %s got %s" %
                                    (off, exp[off:off + 16].hex(), got[off:off + 16].hex()))
            elif op == "xfer":
                t0 = time.monotonic()
                out["ok"] = bool(peer.transfer(cmd["dir"], cmd["segment"],
                                               [tuple(r) for r in cmd["reqs"]],
                                               cmd.get("notify")))
                out["secs"] = time.monotonic() - t0
                if not out["ok"]:
                    out["error"] = "transfer reported failure"
            elif op == "submit":
                out["batch"] = peer.submit(cmd["dir"], cmd["segment"],
                                           [tuple(r) for r in cmd["reqs"]])
            elif op == "poll":
                out["counts"] = peer.poll()
            elif op == "pid":
                out["pid"] = os.getpid()
            elif op == "notify":
                peer.notify(cmd["segment"], cmd["name"], cmd["msg"])
            elif op == "notifies":
                out["list"] = peer.notifies()
            elif op == "probe":
                out["rc"] = peer.probe(cmd["segment"])
            elif op == "first_buffer":
                out["addr"] = peer.first_buffer(cmd["segment"])
            elif op == "quit":
                REPLY.write(json.dumps(out) + "\n")
                return
            else:
                out = {"ok": False, "error": "unknown op " + op}
        except Exception as e:  # report, keep serving
            out = {"ok": False, "error": "%s: %s" % (type(e).__name__, e),
                   "trace": traceback.format_exc()}
        REPLY.write(json.dumps(out) + "\n")


def main():
    kind = sys.argv[1]
    metadata = sys.argv[2] if len(sys.argv) > 2 else "P2PHANDSHAKE"
    local_name = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
    try:
        cls = MooncakePeer if kind == "mooncake" else TeRsPeer
        peer = cls(metadata, local_name)
        REPLY.write(json.dumps({"ok": True, "name": peer.name, "kind": kind}) + "\n")
    except Exception as e:
        REPLY.write(json.dumps({"ok": False, "error": "%s: %s" % (type(e).__name__, e)}) + "\n")
        sys.exit(1)
    serve(peer)
    # Skip engine destructors: the test is over and C++ teardown can be slow.
    os._exit(0)


if __name__ == "__main__":
    main()
