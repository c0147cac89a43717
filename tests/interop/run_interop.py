"""Interop checks between te-rs (C ABI via ctypes) and the upstream C++ Mooncake
engine (PyPI mooncake-transfer-engine-non-cuda), P2PHANDSHAKE metadata + TCP.

Each pair runs a target process and an initiator process (peer.py) and drives
them through JSON-line pipes; every wait is bounded. Must run inside a
loopback-only network namespace (scripts/interop.sh does that).

Usage: run_interop.py [--pairs mooncake:mooncake,te-rs:mooncake,...] [--logdir D]
A pair is INITIATOR:TARGET, optionally suffixed @http (HTTP metadata through
Mooncake's http_metadata_server.py) or @te-http (through te-rs's
te-metadata-server, TE_METADATA_SERVER or next to TE_RS_LIB) instead of
P2PHANDSHAKE. Prints one PASS/FAIL line per check and a final
"N passed, N failed" line; exit status 1 if anything failed.
"""

import argparse
import json
import os
import re
import select
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
KiB, MiB = 1 << 10, 1 << 20
SIZES = [("4KiB", 4 * KiB), ("1MiB", MiB), ("64MiB", 64 * MiB)]
TARGET_BUF = 66 * MiB
REMOTE_OFF = MiB + 8  # unaligned on purpose
GUARD = 64
DEFAULT_PAIRS = ("mooncake:mooncake,te-rs:mooncake,mooncake:te-rs,te-rs:te-rs,"
                 "mooncake:mooncake@http,te-rs:mooncake@http,mooncake:te-rs@http,"
                 "mooncake:mooncake@te-http,te-rs:mooncake@te-http,mooncake:te-rs@te-http,"
                 "te-rs:te-rs@te-http")
NOTE_SPECIAL = 'q"uo\\te/ {br} \n\t ünï €'


class PeerError(RuntimeError):
    pass


class Peer:
    def __init__(self, kind, role, logdir, tag, metadata="P2PHANDSHAKE", local_name=None,
                 env=None):
        self.kind, self.role = kind, role
        self.log_path = os.path.join(logdir, "%s.%s-%s.log" % (tag.replace(">", ""), role, kind))
        self.log = open(self.log_path, "w")
        env = dict(os.environ, **(env or {}))
        env.setdefault("MC_LOG_LEVEL", "WARNING")
        # Store modes advertise an RPC IP; the namespace has only lo.
        env.setdefault("MC_TCP_BIND_ADDRESS", "127.0.0.1")
        if local_name is None:
            local_name = "127.0.0.1" if metadata == "P2PHANDSHAKE" else "%s-%s" % (role, kind)
        self.p = subprocess.Popen([sys.executable, os.path.join(HERE, "peer.py"), kind,
                                   metadata, local_name],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.log, env=env)
        self.buf = b""
        hello = self._read(30.0)
        if not hello.get("ok"):
            self.kill()
            raise PeerError("%s %s failed to start: %s (log %s)" %
                            (role, kind, hello.get("error"), self.log_path))
        self.name = hello["name"]

    def _read(self, timeout):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerError("%s %s: no reply within %.0fs" % (self.role, self.kind, timeout))
            r, _, _ = select.select([self.p.stdout], [], [], left)
            if r:
                chunk = os.read(self.p.stdout.fileno(), 65536)
                if not chunk:
                    raise PeerError("%s %s exited (rc=%s), see %s" %
                                    (self.role, self.kind, self.p.poll(), self.log_path))
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def call(self, timeout=30.0, **cmd):
        if self.p.poll() is not None:
            raise PeerError("%s %s already exited (rc=%s)" % (self.role, self.kind, self.p.returncode))
        self.p.stdin.write((json.dumps(cmd) + "\n").encode())
        self.p.stdin.flush()
        return self._read(timeout)

    def must(self, timeout=30.0, **cmd):
        r = self.call(timeout, **cmd)
        if not r.get("ok"):
            raise PeerError("%s %s %s: %s" % (self.role, self.kind, cmd["op"], r.get("error")))
        return r

    def kill(self):
        if self.p.poll() is None:
            try:
                self.call(5.0, op="quit")
            except Exception:
                pass
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(timeout=10)
        self.log.close()


class Results:
    def __init__(self):
        self.passed, self.failed = 0, 0

    def run(self, label, fn):
        t0 = time.monotonic()
        try:
            detail = fn() or ""
            self.passed += 1
            print("PASS %-58s %5.2fs %s" % (label, time.monotonic() - t0, detail), flush=True)
        except Exception as e:
            self.failed += 1
            print("FAIL %-58s %5.2fs %s" % (label, time.monotonic() - t0, e), flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def te_metadata_server():
    return os.environ.get("TE_METADATA_SERVER") or os.path.join(
        os.path.dirname(os.environ.get("TE_RS_LIB", os.path.join(REPO, "target", "release", "x"))),
        "te-metadata-server")


class HttpMetadataServer:
    """An HTTP metadata server on 127.0.0.1: Mooncake's own
    http_metadata_server.py (kind "http") or te-rs's te-metadata-server
    (kind "te-http")."""

    def __init__(self, kind, logdir, tag):
        self.port = free_port()
        self.url = "http://127.0.0.1:%d/metadata" % self.port
        self.log = open(os.path.join(logdir, "%s.%s-metadata.log" % (tag, kind)), "w")
        if kind == "http":
            argv = [sys.executable, "-m", "mooncake.http_metadata_server"]
        else:
            argv = [te_metadata_server()]
        self.p = subprocess.Popen(argv + ["--host", "127.0.0.1", "--port", str(self.port)],
                                  stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.p.poll() is not None:
                    break
                time.sleep(0.1)
        self.stop()
        raise PeerError("%s did not start on port %d (rc=%s)" % (argv[-1], self.port, self.p.returncode))

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


def pair_checks(res, ikind, tkind, logdir, store=""):
    tag = "%s->%s" % (ikind, tkind) + ("@" + store if store else "")
    metadata, server, sizes = "P2PHANDSHAKE", None, SIZES
    if store in ("http", "te-http"):
        try:
            server = HttpMetadataServer(store, logdir, tag.replace(">", ""))
        except Exception as e:
            res.run("[%s] start http metadata server" % tag, lambda: (_ for _ in ()).throw(e))
            return
        metadata, sizes = server.url, SIZES[:2]
    try:
        _pair_checks(res, ikind, tkind, logdir, tag, metadata, sizes)
    finally:
        if server:
            server.stop()


def _pair_checks(res, ikind, tkind, logdir, tag, metadata, sizes, tgt_kw=None, ini_kw=None,
                 rdma=False):
    """tgt_kw / ini_kw: extra Peer arguments (local_name, env) per side.
    rdma: the C++ initiator posts an out-of-range WRITE as it is, and the
    NIC checks bounds per packet, so the part inside the registered buffer
    may land (still only memory the target registered)."""
    try:
        tgt = Peer(tkind, "target", logdir, tag, metadata, **(tgt_kw or {}))
    except Exception as e:
        res.run("[%s] start target" % tag, lambda: (_ for _ in ()).throw(e))
        return
    try:
        ini = Peer(ikind, "initiator", logdir, tag, metadata, **(ini_kw or {}))
    except Exception as e:
        res.run("[%s] start initiator" % tag, lambda: (_ for _ in ()).throw(e))
        tgt.kill()
        return
    try:
        seg = tgt.name
        tbuf = tgt.must(op="alloc", size=TARGET_BUF)["addr"]
        src = ini.must(op="alloc", size=64 * MiB + 4096)["addr"]
        dst = ini.must(op="alloc", size=64 * MiB + 4096)["addr"]
        remote = tbuf + REMOTE_OFF

        if ikind == "mooncake":
            def descriptor():
                r = ini.must(op="first_buffer", segment=seg)
                if r["addr"] != tbuf:
                    raise PeerError("descriptor buffers[0].addr=%#x, target registered %#x" %
                                    (r["addr"], tbuf))
                return "buffers[0].addr=%#x" % tbuf
            res.run("[%s] open segment %s, descriptor addr" % (tag, seg), descriptor)

            def probe():
                rc = ini.must(op="probe", segment=seg)["rc"]
                if rc != 0:
                    raise PeerError("send_probe(%s) = %d" % (seg, rc))
            res.run("[%s] Probe RPC answered" % tag, probe)

        seed = 100
        for label, n in sizes:
            seed += 1

            def write_readback(n=n, seed=seed):
                tgt.must(op="zero", addr=tbuf, len=TARGET_BUF)
                ini.must(op="fill", addr=src, len=n, seed=seed)
                ini.must(60.0, op="xfer", dir="write", segment=seg, reqs=[[src, remote, n]])
                tgt.must(op="check", addr=remote, len=n, seed=seed)
                tgt.must(op="check", addr=remote - GUARD, len=GUARD)  # still zero
                tgt.must(op="check", addr=remote + n, len=GUARD)
                ini.must(op="zero", addr=dst, len=n)
                ini.must(60.0, op="xfer", dir="read", segment=seg, reqs=[[dst, remote, n]])
                ini.must(op="check", addr=dst, len=n, seed=seed)
            res.run("[%s] WRITE %s, verify target, READ back" % (tag, label), write_readback)

            def read_target_fill(n=n, seed=seed + 50):
                tgt.must(op="fill", addr=remote, len=n, seed=seed)
                ini.must(op="zero", addr=dst, len=n + GUARD)
                ini.must(60.0, op="xfer", dir="read", segment=seg, reqs=[[dst, remote, n]])
                ini.must(op="check", addr=dst, len=n, seed=seed)
                ini.must(op="check", addr=dst + n, len=GUARD)
            res.run("[%s] READ %s filled by target" % (tag, label), read_target_fill)

        def batch(nreq=32, blk=64 * KiB, seed=200):
            total = nreq * blk
            tgt.must(op="zero", addr=tbuf, len=TARGET_BUF)
            ini.must(op="fill", addr=src, len=total, seed=seed)
            # Reverse placement so a request landing at the wrong index shows.
            reqs = [[src + i * blk, remote + (nreq - 1 - i) * blk, blk] for i in range(nreq)]
            ini.must(60.0, op="xfer", dir="write", segment=seg, reqs=reqs)
            for i in range(nreq):
                r = tgt.call(op="check", addr=remote + (nreq - 1 - i) * blk, len=blk)
                if r.get("ok"):
                    raise PeerError("request %d left target block zero" % i)
            ini.must(op="zero", addr=dst, len=total)
            back = [[dst + i * blk, remote + i * blk, blk] for i in range(nreq)]
            ini.must(60.0, op="xfer", dir="read", segment=seg, reqs=back)
            # dst now holds the blocks in reverse order; write them forward again
            # into the target and compare with the original pattern.
            fwd = [[dst + (nreq - 1 - i) * blk, remote + i * blk, blk] for i in range(nreq)]
            ini.must(60.0, op="xfer", dir="write", segment=seg, reqs=fwd)
            tgt.must(op="check", addr=remote, len=total, seed=seed)
        res.run("[%s] batch of 32 x 64KiB WRITE + READ" % tag, batch)

        def out_of_range():
            end = tbuf + TARGET_BUF
            r = ini.call(60.0, op="xfer", dir="write", segment=seg, reqs=[[src, end - 2048, 4096]])
            if r.get("ok"):
                raise PeerError("WRITE straddling the end of the target buffer succeeded")
            r = ini.call(60.0, op="xfer", dir="read", segment=seg, reqs=[[dst, end + 4096, 4096]])
            if r.get("ok"):
                raise PeerError("READ past the end of the target buffer succeeded")
            if not (rdma and ikind == "mooncake"):
                tgt.must(op="check", addr=end - 2048, len=2048)  # untouched (still zero)
            # The pair still works afterwards.
            ini.must(op="fill", addr=src, len=4096, seed=300)
            ini.must(60.0, op="xfer", dir="write", segment=seg, reqs=[[src, end - 4096, 4096]])
            tgt.must(op="check", addr=end - 4096, len=4096, seed=300)
            return "rejected: %s" % (r.get("error") or "")[:40]
        res.run("[%s] out-of-range WRITE/READ fail, pair still usable" % tag, out_of_range)

        def wait_notifies(peer, want, timeout=10.0):
            got = []
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                got += [tuple(x) for x in peer.must(op="notifies")["list"]]
                if all(w in got for w in want):
                    return got
                time.sleep(0.05)
            raise PeerError("expected notifications %r, got %r" % (want, got))

        def notify_with_transfer():
            ini.must(op="notifies")  # drain
            tgt.must(op="notifies")
            ini.must(op="fill", addr=src, len=4096, seed=400)
            note = (ini.name, "write-done " + NOTE_SPECIAL)
            ini.must(60.0, op="xfer", dir="write", segment=seg, reqs=[[src, remote, 4096]],
                     notify=list(note))
            got = wait_notifies(tgt, [note])
            tgt.must(op="check", addr=remote, len=4096, seed=400)
            return "%d notification(s)" % len(got)
        res.run("[%s] transfer with notify reaches target" % tag, notify_with_transfer)

        def notify_not_utf8():
            # Invalid bytes at the end of each string, where the C++ engine's
            # JSON writer and te-rs both put one U+FFFD per byte.
            ini.must(op="notifies")
            tgt.must(op="notifies")
            raw = b"bytes-\xfe\xff".decode("utf-8", "surrogateescape")
            msg = b"done \xc3".decode("utf-8", "surrogateescape")
            ini.must(op="fill", addr=src, len=4096, seed=410)
            ini.must(60.0, op="xfer", dir="write", segment=seg, reqs=[[src, remote, 4096]],
                     notify=[raw, msg])
            tgt.must(op="check", addr=remote, len=4096, seed=410)
            want = ("bytes-\ufffd\ufffd", "done \ufffd")
            return "%d notification(s)" % len(wait_notifies(tgt, [want]))
        res.run("[%s] transfer with a non-UTF-8 notify: delivered, U+FFFD" % tag, notify_not_utf8)

        if ikind == "te-rs":
            def gen_notify():
                note = ("te-rs-direct", "hello " + NOTE_SPECIAL)
                ini.must(op="notify", segment=seg, name=note[0], msg=note[1])
                wait_notifies(tgt, [note])
            res.run("[%s] genNotifyInEngine reaches target" % tag, gen_notify)
    except Exception as e:
        res.run("[%s] harness" % tag, lambda: (_ for _ in ()).throw(e))
    finally:
        ini.kill()
        tgt.kill()


def te_bench():
    return os.environ.get("TE_BENCH") or os.path.join(
        os.path.dirname(os.environ.get("TE_RS_LIB", os.path.join(REPO, "target", "release", "x"))),
        "te-bench")


def bench_exe(kind):
    if kind == "mooncake":
        import mooncake
        return os.path.join(os.path.dirname(mooncake.__file__), "transfer_engine_bench")
    return te_bench()


def wait_segment_published(url, name, timeout=30.0):
    """Until the store holds NAME's descriptor with a registered buffer (what
    an initiator's openSegment needs): the key upstream's engines write."""
    import urllib.parse
    import urllib.request
    key = urllib.parse.quote("mooncake/ram/" + name, safe="")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen("%s?key=%s" % (url, key), timeout=5) as r:
                if json.loads(r.read() or b"{}").get("buffers"):
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise PeerError("segment %s not published in %s after %.0f s" % (name, url, timeout))


def bench_store_checks(res, ikind, tkind, logdir, store):
    """Upstream's transfer_engine_bench store-mode usage: the target
    publishes --local_server_name as its segment, the initiator names it
    with --segment_id, whichever engine plays either role."""
    tag = "bench %s->%s@%s" % (ikind, tkind, store)
    ftag = tag.replace(">", "").replace(" ", "-")

    def check():
        server = HttpMetadataServer(store, logdir, ftag)
        env = dict(os.environ, MC_TCP_BIND_ADDRESS="127.0.0.1")
        tlog = open(os.path.join(logdir, "%s.target-%s.log" % (ftag, tkind)), "w")
        target = subprocess.Popen(
            [bench_exe(tkind), "--mode=target", "--protocol=tcp", "--metadata_server=" + server.url,
             "--local_server_name=bench-target", "--buffer_size=4194304"],
            stdout=tlog, stderr=subprocess.STDOUT, env=env)
        try:
            wait_segment_published(server.url, "bench-target")
            ilog_path = os.path.join(logdir, "%s.initiator-%s.log" % (ftag, ikind))
            with open(ilog_path, "w") as ilog:
                rc = subprocess.call(
                    [bench_exe(ikind), "--mode=initiator", "--protocol=tcp",
                     "--metadata_server=" + server.url, "--local_server_name=bench-initiator",
                     "--segment_id=bench-target", "--operation=write", "--threads=1",
                     "--batch_size=4", "--block_size=65536", "--buffer_size=1048576",
                     "--duration=1"],
                    stdout=ilog, stderr=subprocess.STDOUT, env=env, timeout=60)
            text = open(ilog_path).read()
            m = re.search(r"Test completed: duration [\d.]+, batch count (\d+)", text)
            if rc != 0 or not m or int(m.group(1)) == 0:
                raise PeerError("initiator rc=%d, no completed batches, see %s" % (rc, ilog_path))
            return "%s batches" % m.group(1)
        finally:
            target.terminate()
            try:
                target.wait(timeout=15)
            except subprocess.TimeoutExpired:
                target.kill()
                target.wait()
            tlog.close()
            server.stop()
    res.run("[%s] --segment_id=<target's --local_server_name>" % tag, check)


BENCH_PAIRS = "te-rs:te-rs@te-http,te-rs:mooncake@http,mooncake:te-rs@http,mooncake:te-rs@te-http"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", default=os.environ.get("INTEROP_PAIRS", DEFAULT_PAIRS))
    ap.add_argument("--bench-pairs", default=os.environ.get("INTEROP_BENCH_PAIRS", BENCH_PAIRS),
                    help="transfer_engine_bench store-mode pairs; '' for none")
    ap.add_argument("--logdir", default=os.environ.get("INTEROP_LOGDIR", "/tmp/te-rs-interop"))
    a = ap.parse_args()
    os.makedirs(a.logdir, exist_ok=True)
    res = Results()
    t0 = time.monotonic()
    for pair in filter(None, a.pairs.split(",")):
        pair, _, store = pair.partition("@")
        ikind, tkind = pair.split(":")
        pair_checks(res, ikind, tkind, a.logdir, store)
    for pair in filter(None, a.bench_pairs.split(",")):
        pair, _, store = pair.partition("@")
        ikind, tkind = pair.split(":")
        bench_store_checks(res, ikind, tkind, a.logdir, store or "te-http")
    print("logs: %s; %.1fs" % (a.logdir, time.monotonic() - t0))
    print("%d passed, %d failed" % (res.passed, res.failed))
    sys.exit(1 if res.failed else 0)


if __name__ == "__main__":
    main()
