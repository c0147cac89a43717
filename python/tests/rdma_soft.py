"""Run the vLLM and SGLang sequences between two te-rs engines over the
soft RDMA fabric. The fabric lives inside one process, so both engines are
here; test_rdma_soft.py runs this with MC_RDMA_PROVIDER=soft."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from peer import LocalPeer  # noqa: E402
from sequences import sglang_sequence, vllm_sequence  # noqa: E402


def pair():
    """Two fresh engines, each on its own soft NIC."""
    a, b = LocalPeer(), LocalPeer()
    a.start(protocol="rdma", device="soft0")
    b.start(protocol="rdma", device="soft1")
    return a, b


def main():
    a, b = pair()
    topo = json.loads(a.call("get_local_topology", "soft1"))
    assert topo and all(v[0] == ["soft1"] for v in topo.values()), topo
    vllm_sequence(a, b)
    vllm_sequence(b, a)
    a, b = pair()
    sglang_sequence(a, b)
    a, b = pair()
    sglang_sequence(b, a)
    print("rdma soft: all sequences passed")


if __name__ == "__main__":
    main()
