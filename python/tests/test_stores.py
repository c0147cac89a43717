"""Store-mode metadata (`http://...`), with upstream's own HTTP metadata
server (from its wheel): te-rs with te-rs, and te-rs with upstream."""

import os
import socket
import subprocess
import sys
import time

import pytest

from conftest import child_env, upstream_python
from peer import LocalPeer
from remote import RemotePeer
from sequences import sglang_sequence, vllm_sequence

pytestmark = pytest.mark.interop


@pytest.fixture
def http_metadata():
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
    local = LocalPeer()
    local.start(metadata=url, host="te-rs-local")
    child = RemotePeer(python, env=child_env(),
                       log_path="/tmp/te-rs-pytest/%s.child.log" % request.node.name)
    child.session = child.start(metadata=url, host="child-peer")
    return local, child


def test_http_store_te_rs_pair(http_metadata, request):
    os.makedirs("/tmp/te-rs-pytest", exist_ok=True)
    local, child = start_pair(http_metadata, sys.executable, request)
    try:
        assert child.backend() == "te-rs"
        sglang_sequence(local, child)
        vllm_sequence(child, local)
    finally:
        child.close()


def test_http_store_with_upstream(http_metadata, request):
    os.makedirs("/tmp/te-rs-pytest", exist_ok=True)
    local, child = start_pair(http_metadata, upstream_python(), request)
    try:
        assert child.backend() == "upstream"
        vllm_sequence(local, child)
        sglang_sequence(child, local)
    finally:
        child.close()
