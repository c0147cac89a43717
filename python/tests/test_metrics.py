"""te-rs's metrics from Python: the exposition text, the same numbers as a
dict, and showLinks covering TCP."""

import json

MiB = 1 << 20


def test_metrics_count_what_python_moved(local, te_rs_child):
    size = 1 * MiB
    src, _ = local.alloc("numpy", size)
    dst, dst_addr = te_rs_child.alloc("numpy", size)
    local.fill(src, 5, 0, size)
    for _ in range(3):
        assert local.call("transfer_sync_write", te_rs_child.session, local.addr(src),
                          dst_addr, size) == 0
    assert te_rs_child.check(dst, 5, 0, size) == -1
    m = local.call("get_metrics")
    key = 'te_bytes_total{transport="tcp",op="write",outcome="completed"}'
    assert m[key] == 3 * size, m
    tasks = 'te_tasks_total{transport="tcp",op="write",outcome="completed"}'
    assert m[tasks] == 3
    text = local.call("get_metrics_text")
    assert key + " %d\n" % (3 * size) in text
    assert "# TYPE te_task_latency_seconds histogram" in text
    links = json.loads(local.call("show_links"))
    tcp = links["transports"]["tcp"]
    assert tcp["tasks"]["write"]["bytes"] == 3 * size
    assert tcp["tasks"]["write"]["tasks_completed"] == 3
