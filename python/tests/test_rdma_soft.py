"""The connector sequences over te-rs's RDMA transport on the soft fabric
(`MC_RDMA_PROVIDER=soft`), which is in-process only: both engines run in
one child process (rdma_soft.py), each on its own soft NIC."""

import os
import subprocess
import sys

from conftest import child_env

HERE = os.path.dirname(os.path.abspath(__file__))


def test_sequences_over_soft_rdma():
    env = child_env(MC_RDMA_PROVIDER="soft", MC_SOFT_RDMA_DEVICES="soft0,soft1",
                    MC_LOG_LEVEL="INFO")
    env.pop("MC_FORCE_TCP", None)
    p = subprocess.run([sys.executable, os.path.join(HERE, "rdma_soft.py")], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, "rc=%d\n%s\n%s" % (p.returncode, p.stdout, p.stderr[-8000:])
    assert "all sequences passed" in p.stdout
    # The data really went over RDMA, not a TCP fallback.
    assert "installed transport 'rdma'" in p.stderr, p.stderr[-4000:]
    assert "installed transport 'tcp'" not in p.stderr
