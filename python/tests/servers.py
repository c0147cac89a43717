"""etcd and Redis started on loopback for one test (inside whatever network
namespace pytest runs in). The binaries come from Debian's etcd-server and
redis-server, which scripts/deps.sh --test installs."""

import os
import shutil
import socket
import subprocess
import tempfile
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    def __init__(self, argv, port, log):
        self.port = port
        self.log = open(log, "w")
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if self.p.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("%s did not start on port %d (see %s)" % (argv[0], port, log))
                time.sleep(0.1)

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


def need(binary):
    path = shutil.which(binary)
    if not path:
        raise RuntimeError("%s is not installed (scripts/deps.sh --test installs it)" % binary)
    return path


def start_redis(logdir):
    port = free_port()
    argv = [need("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no"]
    return Server(argv, port, os.path.join(logdir, "redis.log"))


def start_etcd(logdir):
    port, peer = free_port(), free_port()
    data = tempfile.mkdtemp(prefix="te-rs-py-etcd.")
    argv = [need("etcd"), "--data-dir", data,
            "--listen-client-urls", "http://127.0.0.1:%d" % port,
            "--advertise-client-urls", "http://127.0.0.1:%d" % port,
            "--listen-peer-urls", "http://127.0.0.1:%d" % peer,
            "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % peer,
            "--initial-cluster", "default=http://127.0.0.1:%d" % peer]
    server = Server(argv, port, os.path.join(logdir, "etcd.log"))
    server.data = data
    return server
