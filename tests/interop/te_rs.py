"""ctypes binding of te-rs's C ABI (transfer_engine_c.h, spec §1).

Loads the shared library named by TE_RS_LIB (default
target/release/libtransfer_engine.so relative to the repo root) and declares
all 27 functions with the exact struct layouts of spec §1.1. The thin
`Engine` class wraps the calls the interop tests need and raises on errors.
"""

import ctypes
import json
import os
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_LIB = os.path.join(REPO, "target", "release", "libtransfer_engine.so")

# Constants (transfer_engine_c.h:28-57).
LOCAL_SEGMENT = 0
INVALID_BATCH = (1 << 64) - 1
OPCODE_READ = 0
OPCODE_WRITE = 1
STATUS_WAITING, STATUS_PENDING, STATUS_INVALID, STATUS_CANCELED = 0, 1, 2, 3
STATUS_COMPLETED, STATUS_TIMEOUT, STATUS_FAILED = 4, 5, 6
STATUS_NAMES = ["WAITING", "PENDING", "INVALID", "CANCELED", "COMPLETED",
                "TIMEOUT", "FAILED"]



def _raw(text):
    """Notification text to C bytes; lone surrogates (surrogateescape) carry
    bytes that are not UTF-8, so a test can send them."""
    return text.encode("utf-8", "surrogateescape")


def _text(raw):
    return raw.decode("utf-8", "surrogateescape")

class TransferRequest(ctypes.Structure):
    # offsets 0, 8, 16, 24, 32; size 40
    _fields_ = [("opcode", ctypes.c_int),
                ("source", ctypes.c_void_p),
                ("target_id", ctypes.c_int32),
                ("target_offset", ctypes.c_uint64),
                ("length", ctypes.c_uint64)]


class NotifyMsg(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("msg", ctypes.c_char_p)]


class TransferStatus(ctypes.Structure):
    _fields_ = [("status", ctypes.c_int), ("transferred_bytes", ctypes.c_uint64)]


class BufferEntry(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_void_p), ("length", ctypes.c_size_t)]


class NicLoadStat(ctypes.Structure):
    _fields_ = [("device_name", ctypes.c_char * 64),
                ("inflight_bytes", ctypes.c_uint64),
                ("ewma_bandwidth_bps", ctypes.c_double)]


assert ctypes.sizeof(TransferRequest) == 40
assert TransferRequest.target_offset.offset == 24
assert ctypes.sizeof(NotifyMsg) == 16
assert ctypes.sizeof(TransferStatus) == 16
assert ctypes.sizeof(BufferEntry) == 16
assert ctypes.sizeof(NicLoadStat) == 80

_e = ctypes.c_void_p  # transfer_engine_t
_p = ctypes.c_char_p
_i32 = ctypes.c_int32
_u64 = ctypes.c_uint64
_int = ctypes.c_int
_sz = ctypes.c_size_t

# name: (restype, argtypes). 27 functions.
SIGNATURES = {
    "createTransferEngine": (_e, [_p, _p, _p, _u64, _int]),
    "discoverTopology": (_int, [_e]),
    "getLocalIpAndPort": (_int, [_e, ctypes.c_char_p, _sz]),
    "installTransport": (ctypes.c_void_p, [_e, _p, ctypes.POINTER(ctypes.c_void_p)]),
    "uninstallTransport": (_int, [_e, _p]),
    "openSegment": (_i32, [_e, _p]),
    "openSegmentNoCache": (_i32, [_e, _p]),
    "closeSegment": (_int, [_e, _i32]),
    "warmupEfaSegment": (_int, [_e, _p]),
    "removeLocalSegment": (_int, [_e, _p]),
    "destroyTransferEngine": (None, [_e]),
    "registerLocalMemory": (_int, [_e, ctypes.c_void_p, _sz, _p, _int]),
    "unregisterLocalMemory": (_int, [_e, ctypes.c_void_p]),
    "registerLocalMemoryBatch": (_int, [_e, ctypes.POINTER(BufferEntry), _sz, _p]),
    "unregisterLocalMemoryBatch": (_int, [_e, ctypes.POINTER(ctypes.c_void_p), _sz]),
    "allocateBatchID": (_u64, [_e, _sz]),
    "submitTransfer": (_int, [_e, _u64, ctypes.POINTER(TransferRequest), _sz]),
    "submitTransferWithNotify": (_int, [_e, _u64, ctypes.POINTER(TransferRequest), _sz, NotifyMsg]),
    "getTransferStatus": (_int, [_e, _u64, _sz, ctypes.POINTER(TransferStatus)]),
    "getNotifsFromEngine": (ctypes.POINTER(NotifyMsg), [_e, ctypes.POINTER(_int)]),
    "freeNotifsMsgBuf": (_int, [ctypes.POINTER(NotifyMsg), _int]),
    "genNotifyInEngine": (_int, [_e, _u64, NotifyMsg]),
    "freeBatchID": (_int, [_e, _u64]),
    "syncSegmentCache": (_int, [_e]),
    "getNicLoadStats": (_int, [_e, ctypes.POINTER(NicLoadStat), ctypes.POINTER(_sz)]),
    "enableGracefulShutdown": (None, [_e]),
    "showLinks": (_int, [_e, ctypes.c_char_p, _sz, _int]),
}
assert len(SIGNATURES) == 27


class TeRsError(RuntimeError):
    pass


def load(path=None):
    """Load the library and declare every function; raise if one is missing."""
    path = path or os.environ.get("TE_RS_LIB", DEFAULT_LIB)
    lib = ctypes.CDLL(path)
    missing = []
    for name, (res, args) in SIGNATURES.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            missing.append(name)
            continue
        fn.restype = res
        fn.argtypes = args
    if missing:
        raise TeRsError("%s lacks C ABI symbols: %s" % (path, ", ".join(missing)))
    return lib


class Engine:
    """One te-rs engine driven through the C ABI."""

    def __init__(self, metadata="P2PHANDSHAKE", local_name="127.0.0.1",
                 protocol="tcp", lib=None, devices=None, ip="127.0.0.1"):
        """devices: RDMA device names for the NIC priority matrix (args[0] of
        installTransport); None lets the engine discover them."""
        self.lib = lib or load()
        self.h = self.lib.createTransferEngine(metadata.encode(), local_name.encode(),
                                               ip.encode(), 0, 0)
        if not self.h:
            raise TeRsError("createTransferEngine returned NULL")
        args = None
        if devices:
            matrix = json.dumps({"cpu:0": [list(devices), []], "*": [list(devices), []]})
            self._matrix = ctypes.c_char_p(matrix.encode())
            args = (ctypes.c_void_p * 2)(ctypes.cast(self._matrix, ctypes.c_void_p), None)
        if not self.lib.installTransport(self.h, protocol.encode(), args):
            raise TeRsError("installTransport(%s) returned NULL" % protocol)

    def segment_name(self):
        buf = ctypes.create_string_buffer(256)
        rc = self.lib.getLocalIpAndPort(self.h, buf, len(buf))
        if rc != 0:
            raise TeRsError("getLocalIpAndPort rc=%d" % rc)
        return buf.value.decode()

    def register(self, addr, length, location="cpu:0"):
        rc = self.lib.registerLocalMemory(self.h, addr, length, location.encode(), 1)
        if rc != 0:
            raise TeRsError("registerLocalMemory rc=%d" % rc)

    def unregister(self, addr):
        return self.lib.unregisterLocalMemory(self.h, addr)

    def open_segment(self, name):
        sid = self.lib.openSegment(self.h, name.encode())
        if sid < 0:
            raise TeRsError("openSegment(%s) = %d" % (name, sid))
        return sid

    def submit(self, reqs, notify=None):
        """Submit one batch without waiting; returns its batch id."""
        n = len(reqs)
        bid = self.lib.allocateBatchID(self.h, n)
        if bid == INVALID_BATCH:
            raise TeRsError("allocateBatchID returned INVALID_BATCH")
        arr = (TransferRequest * n)()
        for i, (op, src, sid, dst, ln) in enumerate(reqs):
            arr[i] = TransferRequest(op, src, sid, dst, ln)
        if notify is None:
            rc = self.lib.submitTransfer(self.h, bid, arr, n)
        else:
            nm = NotifyMsg(_raw(notify[0]), _raw(notify[1]))
            rc = self.lib.submitTransferWithNotify(self.h, bid, arr, n, nm)
        if rc != 0:
            self.lib.freeBatchID(self.h, bid)
            raise TeRsError("submitTransfer rc=%d" % rc)
        return bid

    def statuses(self, bid, n):
        """Status name of each of the n tasks of batch bid."""
        st = TransferStatus()
        out = []
        for i in range(n):
            rc = self.lib.getTransferStatus(self.h, bid, i, ctypes.byref(st))
            if rc != 0:
                raise TeRsError("getTransferStatus(task %d) rc=%d" % (i, rc))
            if not 0 <= st.status <= 6:
                raise TeRsError("status %d outside 0..6" % st.status)
            out.append(STATUS_NAMES[st.status])
        return out

    def free_batch(self, bid):
        return self.lib.freeBatchID(self.h, bid)

    def transfer(self, reqs, timeout=60.0, notify=None):
        """reqs: list of (opcode, local_addr, segment_id, remote_addr, length).
        Submits one batch, polls every task to a terminal state, frees it.
        Returns the list of (status, transferred_bytes)."""
        n = len(reqs)
        bid = self.submit(reqs, notify)
        out = [None] * n
        st = TransferStatus()
        deadline = time.monotonic() + timeout
        pending = set(range(n))
        while pending:
            for i in sorted(pending):
                rc = self.lib.getTransferStatus(self.h, bid, i, ctypes.byref(st))
                if rc != 0:
                    raise TeRsError("getTransferStatus(task %d) rc=%d" % (i, rc))
                if not 0 <= st.status <= 6:
                    raise TeRsError("status %d outside 0..6" % st.status)
                if st.status in (STATUS_COMPLETED, STATUS_FAILED):
                    out[i] = (STATUS_NAMES[st.status], st.transferred_bytes)
                    pending.discard(i)
            if pending:
                if time.monotonic() > deadline:
                    raise TeRsError("tasks %s not terminal after %.0fs" % (sorted(pending), timeout))
                time.sleep(0.0005)
        rc = self.lib.freeBatchID(self.h, bid)
        if rc != 0:
            raise TeRsError("freeBatchID rc=%d after all tasks terminal" % rc)
        return out

    def notify(self, segment_id, name, msg):
        return self.lib.genNotifyInEngine(self.h, segment_id,
                                          NotifyMsg(_raw(name), _raw(msg)))

    def get_notifies(self):
        size = _int(0)
        p = self.lib.getNotifsFromEngine(self.h, ctypes.byref(size))
        if not p:
            return []
        res = [(_text(p[i].name), _text(p[i].msg)) for i in range(size.value)]
        self.lib.freeNotifsMsgBuf(p, size.value)
        return res

    def close(self):
        if self.h:
            self.lib.destroyTransferEngine(self.h)
            self.h = None
