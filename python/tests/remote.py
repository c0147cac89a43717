"""Drive a peer.py child process (any interpreter, any virtualenv) with the
same methods as peer.LocalPeer. Every reply is awaited with a bound."""

import json
import os
import select
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))


class PeerError(RuntimeError):
    pass


class RemotePeer:
    def __init__(self, python, env=None, log_path=None, timeout=60.0):
        self.log = open(log_path or os.devnull, "w")
        self.p = subprocess.Popen([python, os.path.join(HERE, "peer.py")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.log, env=env)
        self.buf = b""
        self.timeout = timeout
        self._read(30.0)

    def _read(self, timeout):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerError("peer gave no reply within %.0f s" % timeout)
            r, _, _ = select.select([self.p.stdout], [], [], left)
            if r:
                chunk = os.read(self.p.stdout.fileno(), 1 << 16)
                if not chunk:
                    raise PeerError("peer exited (rc=%s)" % self.p.wait())
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        reply = json.loads(line)
        if not reply.get("ok"):
            raise PeerError(reply.get("error"))
        return reply.get("result")

    def _rpc(self, op, *args, **kwargs):
        msg = {"op": op, "args": list(args), "kwargs": kwargs}
        self.p.stdin.write((json.dumps(msg) + "\n").encode())
        self.p.stdin.flush()
        return self._read(self.timeout)

    def __getattr__(self, op):
        return lambda *a, **k: self._rpc(op, *a, **k)

    def read(self, bid, off, length):
        return bytes.fromhex(self._rpc("read", bid, off, length))

    def opcode(self, name):
        return {"$opcode": name}

    def note(self, name, msg):
        return {"$notify": [name, msg]}

    def close(self):
        if self.p.poll() is None:
            try:
                self._rpc("quit")
            except Exception:
                pass
            try:
                self.p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()
