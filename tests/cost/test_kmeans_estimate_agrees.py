"""Benchmark-style check (issue 23): kmeans under load. The local estimate (`myelin serve --stack dev`, /info) and
the cluster's formula (the committed recording rules, evaluated by promtool) fed with the same CPU figures agree
within 10%.

The same CPU figures, measured from outside the server over the load window: the server process's CPU seconds
from /proc (what cAdvisor reports for its container) over the 2xx it answered (from /metrics). The cluster side
is one replica as the stack deploys it (kmeans' compute: 1 CPU, 512Mi; OpenCost's allocation is its request) on
an m6i.large, answering at the rate its CPU request allows at that CPU per prediction (the load the autoscaler
steers it to), with the node's prices as OpenCost derives them from the on-demand price (computed here from
OpenCost's own ratios, not by myelin.cost), evaluated by the committed recording rules. The local side is the
server's own figure at /info: process CPU since load over answered predictions, priced by myelin.cost. So the
check covers the runtime's measurement against an external one, and its price split and formula against the
rules'. No wall-clock threshold: only the two dollar figures are compared.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import httpx
import pytest
import yaml

from conftest import ROOT, ServerProcess
from components.observability import cost as cluster_cost
from myelin import ec2_prices

CLIENTS = 8
REQUESTS = 3000
PAYLOAD = {"features": [-2.5, 7.3]}
TOLERANCE = 0.10


@pytest.fixture(scope="module")
def promtool() -> str:
    from system_packages import ensure

    return ensure("promtool", "prometheus")


def _cpu_seconds(pid: int) -> float:
    """utime + stime of the process, from /proc (clock ticks)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _answered(base: str) -> float:
    total = 0.0
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith('myelin_requests_total{') and 'api="kmeans"' in line and 'status="2' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _load(url: str) -> dict[int, int]:
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    remaining = [REQUESTS]

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while True:
                with lock:
                    if remaining[0] == 0:
                        return
                    remaining[0] -= 1
                status = http.post(url, json=PAYLOAD).status_code
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def _opencost_node_prices(instance_type: str = "m6i.large", region: str = "us-west-2") -> tuple[float, float]:
    """(per vCPU, per GiB) as OpenCost splits an AWS node's on-demand price with its default ratios (configs/aws.json
    CPU 0.031611, RAM 0.004237; pkg/costmodel/costmodel.go GetNodeCost)."""
    total = ec2_prices.ON_DEMAND[region][instance_type]
    vcpus, memory_gib, _ = ec2_prices.INSTANCES[instance_type]
    ratio = 0.031611 / 0.004237
    ram = total / (vcpus * ratio + memory_gib)
    return ram * ratio, ram


def test_local_estimate_and_cluster_formula_agree_for_kmeans_under_load(tmp_path, promtool):
    server = ServerProcess(["serve", "apis/kmeans", "--stack", "dev"], tmp_path)
    try:
        server.wait_ready(timeout=120)
        url = f"{server.base}/kmeans"
        with httpx.Client(timeout=30) as http:  # warm up (first batches, lazy imports)
            for _ in range(50):
                assert http.post(url, json=PAYLOAD).status_code == 200
        pid = server.proc.pid
        cpu0, answered0, wall0 = _cpu_seconds(pid), _answered(server.base), time.monotonic()
        statuses = _load(url)
        cpu1, answered1, wall1 = _cpu_seconds(pid), _answered(server.base), time.monotonic()
        info = httpx.get(f"{server.base}/info", timeout=10).json()
    finally:
        server.stop()
    assert statuses == {200: REQUESTS}, statuses
    (api,) = info["apis"]
    local = api["cost"]
    assert local["measured"] and local["predictions"] == REQUESTS + 50
    estimate = local["estimate"]
    assert (estimate["instance_type"], estimate["region"]) == ("m6i.large", "us-west-2")

    # The same CPU figure, measured outside the server over the load window.
    cpu_per_prediction = (cpu1 - cpu0) / (answered1 - answered0)
    request_cores = 1.0  # kmeans' compute.cpu: OpenCost's allocation of a replica busy at its request
    per_second = request_cores / cpu_per_prediction
    used_cores = (cpu1 - cpu0) / (wall1 - wall0)  # for the report only (this machine's clients share its CPUs)
    cpu_price, ram_price = _opencost_node_prices()
    memory_bytes = 512 * 2**20  # kmeans' compute.mem
    node = ('instance="ip-a",node="ip-a",instance_type="m6i.large",region="us-west-2",provider_id="aws:///i-a",'
            'arch="amd64",uid="n1"')
    container = 'namespace="apis",pod="kmeans-1",container="predictor",instance="ip-a",node="ip-a",uid="p1"'
    series = [
        (f"node_cpu_hourly_cost{{{node}}}", f"{cpu_price!r}x30"),
        (f"node_ram_hourly_cost{{{node}}}", f"{ram_price!r}x30"),
        (f"node_gpu_hourly_cost{{{node}}}", "0x30"),
        (f"node_total_hourly_cost{{{node}}}", "0.096x30"),
        (f"container_cpu_allocation{{{container}}}", f"{request_cores!r}x30"),
        (f"container_memory_allocation_bytes{{{container}}}", f"{memory_bytes}x30"),
        ('kube_pod_labels{namespace="apis",pod="kmeans-1",uid="p1",label_app_kubernetes_io_name="kmeans"}', "1x30"),
        ('myelin_requests_total{namespace="apis",pod="kmeans-1",api="kmeans",status="200"}',
         f"0+{per_second * 60!r}x30"),
    ]
    local_dollars = estimate["per_million_dollars"]
    test = {
        "rule_files": ["myelin-cost.yml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in series],
            "promql_expr_test": [{
                "expr": f'abs(myelin:cost_per_million_predictions_dollars{{api="kmeans"}} / {local_dollars!r} - 1) '
                        f"< bool {TOLERANCE}",
                "eval_time": "10m",
                "exp_samples": [{"labels": '{api="kmeans"}', "value": 1}],
            }],
        }],
    }
    shutil.copy(cluster_cost.RULES_FILE, tmp_path / "myelin-cost.yml")
    (tmp_path / "agree.test.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    out = subprocess.run([promtool, "test", "rules", "agree.test.yml"], capture_output=True, text=True, cwd=tmp_path)
    cluster_dollars = 1e6 * (request_cores * cpu_price + memory_bytes / 2**30 * ram_price) / (3600 * per_second)
    report = (f"kmeans under load ({(answered1 - answered0) / (wall1 - wall0):.0f}/s on {used_cores:.2f} cores here): "
              f"local {local['cpu_seconds_per_prediction'] * 1000:.3f} ms CPU/prediction -> ${local_dollars:.4f} per "
              f"1M; outside {cpu_per_prediction * 1000:.3f} ms -> cluster formula ${cluster_dollars:.4f} per 1M "
              f"({cluster_dollars / local_dollars - 1:+.1%})")
    print("\n" + report)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, report + "\n" + out.stdout + out.stderr
