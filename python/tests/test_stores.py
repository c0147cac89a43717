"""Store-mode metadata as upstream's module parses it: `http://...` with
upstream's own HTTP metadata server (te-rs with te-rs, te-rs with upstream),
`etcd://host:port`, a bare `host:port` (etcd) and `redis://host:port`
between te-rs engines, on servers started inside the test's namespace."""

import os
import socket
import subprocess
import sys
import time

import pytest

import servers

from conftest import LOGDIR, _log, child_env, upstream_python
from peer import LocalPeer
from remote import RemotePeer
from sequences import sglang_sequence, vllm_sequence



@pytest.fixture
def http_metadata():
    """Upstream's mooncake.http_metadata_server (from its virtualenv)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    p = subprocess.Popen([upstream_python(), "-m", "mooncake.http_metadata_server",
                          "--host", "127.0.0.1", "--port", str(port)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert p.poll() is None and time.monotonic() < deadline, "metadata server did not start"
            time.sleep(0.1)
    yield "http://127.0.0.1:%d/metadata" % port
    p.terminate()
    p.wait(timeout=10)


def start_pair(url, python, request):
    os.makedirs(LOGDIR, exist_ok=True)
    local = LocalPeer()
    local.start(metadata=url, host="te-rs-local")
    child = RemotePeer(python, env=child_env(),
                       log_path=_log(request, "child"))
    child.session = child.start(metadata=url, host="child-peer")
    return local, child


def test_http_store_te_rs_pair(http_metadata, request):
    local, child = start_pair(http_metadata, sys.executable, request)
    try:
        assert child.backend() == "te-rs"
        sglang_sequence(local, child)
        vllm_sequence(child, local)
    finally:
        child.close()


@pytest.mark.interop
def test_http_store_with_upstream(http_metadata, request):
    local, child = start_pair(http_metadata, upstream_python(), request)
    try:
        assert child.backend() == "upstream"
        vllm_sequence(local, child)
        sglang_sequence(child, local)
    finally:
        child.close()


@pytest.fixture
def etcd():
    os.makedirs(LOGDIR, exist_ok=True)
    server = servers.start_etcd(LOGDIR)
    yield "127.0.0.1:%d" % server.port
    server.stop()


@pytest.fixture
def redis():
    os.makedirs(LOGDIR, exist_ok=True)
    server = servers.start_redis(LOGDIR)
    yield "redis://127.0.0.1:%d" % server.port
    server.stop()


@pytest.mark.parametrize("scheme", ["", "etcd://"], ids=["bare-host-port", "etcd-url"])
def test_etcd_store_te_rs_pair(etcd, scheme, request):
    url = scheme + etcd
    local, child = start_pair(url, sys.executable, request)
    try:
        sglang_sequence(local, child)
    finally:
        child.close()


def test_redis_store_te_rs_pair(redis, request):
    local, child = start_pair(redis, sys.executable, request)
    try:
        vllm_sequence(local, child)
    finally:
        child.close()


def test_initialize_ext_with_metadata_type(redis, request):
    """initialize_ext(host, server, protocol, device, metadata_type): a bare
    server gets `metadata_type://` in front, as upstream builds it."""
    local = LocalPeer()
    local.start(metadata=redis[len("redis://"):], host="te-rs-ext", metadata_type="redis")
    child = RemotePeer(sys.executable, env=child_env(), log_path=_log(request, "child"))
    try:
        child.session = child.start(metadata=redis, host="child-ext")
        sglang_sequence(child, local)
    finally:
        child.close()
