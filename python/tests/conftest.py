"""Fixtures: te-rs peers in this process or in child processes, and
upstream's engine (from its own virtualenv) in a child process.

MOONCAKE_UPSTREAM_PYTHON names the interpreter of a virtualenv holding
upstream's `mooncake-transfer-engine-non-cuda`; the interop tests fail
without it (deselect them with `-m "not interop"`)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from peer import LocalPeer  # noqa: E402
from remote import RemotePeer  # noqa: E402

LOGDIR = os.environ.get("TE_RS_PYTEST_LOGDIR", "/tmp/te-rs-pytest")


def child_env(**extra):
    env = dict(os.environ)
    env.setdefault("MC_LOG_LEVEL", "WARNING")
    env.update(extra)
    return env


@pytest.fixture
def local():
    peer = LocalPeer()
    assert peer.backend() == "te-rs", "this interpreter does not import te-rs's mooncake.engine"
    peer.start()
    yield peer
    del peer.engine


@pytest.fixture
def te_rs_child(request):
    peer = RemotePeer(sys.executable, env=child_env(),
                      log_path=_log(request, "te-rs"))
    assert peer.backend() == "te-rs"
    peer.session = peer.start()
    yield peer
    peer.close()


def upstream_python():
    python = os.environ.get("MOONCAKE_UPSTREAM_PYTHON")
    if not python:
        pytest.fail("MOONCAKE_UPSTREAM_PYTHON is not set: it must name the python of a "
                    "virtualenv with mooncake-transfer-engine-non-cuda (scripts/pytest.sh makes one)")
    return python


@pytest.fixture
def upstream_child(request):
    python = upstream_python()
    peer = RemotePeer(python, env=child_env(), log_path=_log(request, "upstream"))
    assert peer.backend() == "upstream", "%s imports te-rs, not upstream's wheel" % python
    peer.session = peer.start()
    yield peer
    peer.close()


def _log(request, name):
    os.makedirs(LOGDIR, exist_ok=True)
    node = request.node.name.replace("/", "_")
    return os.path.join(LOGDIR, "%s.%s.log" % (node, name))
