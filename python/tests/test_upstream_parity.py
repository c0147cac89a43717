"""Details a migrating user's code relies on without noticing, compared in the
same run with upstream's wheel (MOONCAKE_UPSTREAM_PYTHON): `initialize`'s
protocol strings, `TransferOpcode` as a pybind11 enum, `get_local_topology`
without NICs, and a clear warning when both packages share one folder."""

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

import mooncake.engine

from conftest import child_env, upstream_python

pytestmark = pytest.mark.interop

# Upstream's module reads `protocol` only to pick a memory allocator and
# installs what auto-discovery finds; it refuses only "xgmi".
PROTOCOLS = {"tcp": 0, "TCP": 0, "RDMA": 0, "Tcp": 0, "efa": 0, "nvlink": 0, "bogus": 0,
             "": 0, "xgmi": -1}


def test_initialize_reads_protocol_strings_as_upstream(te_rs_child, upstream_child):
    for protocol, want in PROTOCOLS.items():
        te = te_rs_child.initialize_result(protocol)
        up = upstream_child.initialize_result(protocol)
        assert (te, up) == (want, want), protocol


def test_initialize_says_why_a_protocol_was_not_installed():
    code = ("from mooncake.engine import TransferEngine as T\n"
            "assert T().initialize('127.0.0.1', 'P2PHANDSHAKE', 'efa', '') == 0\n"
            "assert T().initialize('127.0.0.1', 'P2PHANDSHAKE', 'xgmi', '') == -1\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=child_env(MC_LOG_LEVEL="INFO", MC_FORCE_TCP="1"), timeout=60)
    assert out.returncode == 0, out.stderr
    assert "protocol 'efa' has no transport in te-rs" in out.stderr, out.stderr
    assert "Protocol 'xgmi' is not exposed in the Python API. Use 'hip' instead." in out.stderr


def test_transfer_opcode_behaves_as_upstreams_enum(te_rs_child, upstream_child):
    te, up = te_rs_child.opcode_facts(), upstream_child.opcode_facts()
    assert te == up
    # What code relies on, spelled out, so the comparison cannot pass on
    # two equally wrong answers.
    assert te["names"] == ["Read", "Write"] and te["values"] == [0, 1]
    assert te["members"] == {"Read": ["Read", 0], "Write": ["Write", 1]}
    assert te["dict_key"] == "w" and te["hash_eq_value"] == [True, True]
    assert te["eq_int"] == [False, False, True]  # never equal to a plain int
    assert te["repr"] == ["<TransferOpcode.Read: 0>", "<TransferOpcode.Write: 1>"]
    assert te["order_int"] == ["raises", "TypeError"] and te["pickle"] is True


def test_transfer_opcode_refuses_values_without_a_member():
    # pybind11 makes a nameless "TransferOpcode.???" here; te-rs says why.
    with pytest.raises(ValueError, match="not a TransferOpcode"):
        mooncake.engine.TransferOpcode(5)


def test_local_topology_without_nics_as_upstream(te_rs_child, upstream_child):
    for device in (None, "mlx5_0"):
        te, up = te_rs_child.local_topology(device), upstream_child.local_topology(device)
        if any(pref or avail for pref, avail in list(te.values()) + list(up.values())):
            pytest.skip("this host has RDMA devices: %r" % te)
        assert te == up, device
        assert te and all(k.startswith("cpu:") and v == [[], []] for k, v in te.items()), te


def upstream_package_dir():
    out = subprocess.run([upstream_python(), "-c",
                          "import mooncake, os; print(os.path.dirname(mooncake.__file__))"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_both_packages_in_one_folder_warn_clearly():
    """pip puts both wheels' files into one `mooncake/` folder; Python then
    loads te-rs's engine.cpython-*.so before upstream's engine.so."""
    ours = mooncake.engine.__file__
    assert os.path.basename(ours) != "engine.so", ours
    probe = [sys.executable, "-c", "import mooncake.engine as m; print(m.BACKEND)"]
    with tempfile.TemporaryDirectory() as tmp:
        pkg = os.path.join(tmp, "mooncake")
        os.mkdir(pkg)
        shutil.copy(ours, pkg)
        shutil.copy(os.path.join(os.path.dirname(ours), "__init__.py"), pkg)
        env = child_env(PYTHONPATH=tmp)
        alone = subprocess.run(probe, capture_output=True, text=True, env=env, timeout=60)
        assert alone.returncode == 0 and alone.stdout.strip() == "te-rs", alone.stderr
        assert "same folder" not in alone.stderr, alone.stderr

        up = upstream_package_dir()
        # Upstream installed second: its __init__.py (and what that imports)
        # replaces te-rs's, its engine.so sits beside te-rs's module.
        for f in ("engine.so", "__init__.py", "buffer_pool.py"):
            dest = os.path.join(pkg, f)
            if os.path.exists(dest):
                os.remove(dest)
            os.symlink(os.path.join(up, f), dest)
        mixed = subprocess.run(probe, capture_output=True, text=True, env=env, timeout=60)
    assert mixed.returncode == 0 and mixed.stdout.strip() == "te-rs", mixed.stderr
    assert "RuntimeWarning" in mixed.stderr, mixed.stderr
    assert "are installed in the same folder" in mixed.stderr, mixed.stderr
    assert "pip uninstall" in mixed.stderr, mixed.stderr
