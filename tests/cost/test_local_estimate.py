"""The cost estimate before deploying (issue 23): CPU seconds per answered prediction, the stack's node and price
read from Pulumi.<stack>.yaml without pulumi, OpenCost's split of a node's price, and the pinned price table."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import ROOT
from myelin import contract as c
from myelin import cost, ec2_prices
from myelin.metrics import Metrics
from myelin.spec import load_api_spec

APIS = ROOT / "apis"


def test_opencost_split_adds_up_to_the_node_price_in_its_default_ratios():
    # m6i.large: OpenCost's GetNodeCost with its AWS defaults (configs/aws.json CPU 0.031611, RAM 0.004237):
    # ramPrice = nodePrice / (cpu x CPU/RAM + ramGiB), cpuPrice = ramPrice x CPU/RAM.
    cpu, ram, gpu = cost.opencost_split(0.096, 2, 8, 0)
    ratio = 0.031611 / 0.004237
    assert ram == pytest.approx(0.096 / (2 * ratio + 8)) and cpu == pytest.approx(ram * ratio) and gpu == 0
    assert 2 * cpu + 8 * ram == pytest.approx(0.096)
    # A GPU node: the GPU takes its share in the ratio GPU/RAM (0.95 / 0.004237), as OpenCost does on AWS.
    cpu, ram, gpu = cost.opencost_split(0.526, 4, 16, 1)
    assert gpu / ram == pytest.approx(0.95 / 0.004237) and 4 * cpu + 16 * ram + gpu == pytest.approx(0.526)


def test_the_default_cpu_pool_mirrors_the_stack_config_default():
    from components.config import ClusterConfig

    assert list(cost.DEFAULT_CPU_INSTANCE_TYPES) == ClusterConfig().cpu_nodes.instance_types


def test_the_pinned_table_states_its_date_and_source_and_prices_every_stack_instance_type():
    sys.path.insert(0, str(ROOT / "scripts"))
    import refresh_prices

    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", ec2_prices.AS_OF) and "AWS" in ec2_prices.SOURCE
    types, regions = refresh_prices.stack_targets(ROOT)
    assert regions == {"us-west-2", "us-east-1"}
    for region in regions:
        missing = types - set(ec2_prices.ON_DEMAND[region])
        assert not missing, f"{region}: no price for {missing}: run scripts/refresh_prices.py"
    assert types <= set(ec2_prices.INSTANCES)


def test_placement_reads_region_pool_and_overrides_from_the_stack_file():
    kmeans = load_api_spec(APIS / "kmeans")
    p = cost.read_placement(ROOT / "Pulumi.dev.yaml", APIS / "kmeans", kmeans)
    assert (p.node.instance_type, p.node.region, p.pool, p.spot, p.deployed) == (
        "m6i.large", "us-west-2", "cpu_nodes", True, True)
    assert (p.cpu, p.memory_gib, p.gpus) == (1.0, 0.5, 0)
    iris = cost.read_placement(ROOT / "Pulumi.dev.yaml", APIS / "iris-classifier",
                               load_api_spec(APIS / "iris-classifier"))
    assert iris.cpu == 0.25  # dev's override of compute.cpu
    embed = cost.read_placement(ROOT / "Pulumi.prod.yaml", APIS / "sentence-embedding",
                                load_api_spec(APIS / "sentence-embedding"))
    assert (embed.node.instance_type, embed.node.region, embed.pool, embed.spot, embed.gpus) == (
        "g6.xlarge", "us-east-1", "gpu_nodes", False, 1)
    # dev does not deploy sentence-embedding: its own api.yaml, dev's GPU pool
    other = cost.read_placement(ROOT / "Pulumi.dev.yaml", APIS / "sentence-embedding",
                                load_api_spec(APIS / "sentence-embedding"))
    assert other.deployed is False and other.node.instance_type == "g4dn.xlarge"


@pytest.mark.parametrize("text, message", [
    ("config: {}\n", r"bad.yaml: aws:region: required"),
    ("config:\n  aws:region: us-west-2\n  myelin:cluster:\n    cpu_nodes:\n      instance_types: [z9.huge]\n",
     r"bad.yaml: myelin:cluster.cpu_nodes.instance_types: no price for z9.huge in us-west-2"),
    ("config:\n  aws:region: mars-north-1\n", r"bad.yaml: myelin:cluster.cpu_nodes.instance_types: no prices for region "
                                            r"mars-north-1"),
    ("config:\n  aws:region: us-west-2\n  myelin:cluster: [1]\n", r"bad.yaml: myelin:cluster: expected a mapping"),
])
def test_a_stack_file_the_estimate_cannot_use_names_the_file_and_field(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(cost.CostConfigError, match=message):
        cost.check_stack_file(bad)
    with pytest.raises(cost.CostConfigError, match=message):
        cost.read_placement(bad, APIS / "kmeans", load_api_spec(APIS / "kmeans"))


def test_a_gpu_api_on_a_stack_without_gpu_nodes_is_an_error(tmp_path):
    stack = tmp_path / "Pulumi.cpu.yaml"
    stack.write_text("config:\n  aws:region: us-west-2\n")
    with pytest.raises(cost.CostConfigError, match=r"myelin:cluster.gpu_nodes: sentence-embedding needs a GPU"):
        cost.read_placement(stack, APIS / "sentence-embedding", load_api_spec(APIS / "sentence-embedding"))


def test_the_estimate_is_the_cluster_formula_for_a_busy_replica():
    p = cost.read_placement(ROOT / "Pulumi.dev.yaml", APIS / "kmeans", load_api_spec(APIS / "kmeans"))
    est = cost.estimate(0.002, p)
    n = cost.node_price("m6i.large", "us-west-2")
    hourly = 1.0 * n.cpu_hourly + 0.5 * n.ram_hourly
    assert est["replica"]["hourly_dollars"]["total"] == pytest.approx(hourly)
    assert est["replica"]["predictions_per_second"] == pytest.approx(1.0 / 0.002)
    assert est["per_million_dollars"] == pytest.approx(1e6 * hourly / (3600 * 500))
    assert est["spot_per_million_dollars"] == pytest.approx([est["per_million_dollars"] * s for s in cost.SPOT_SHARE])
    assert est["text"].startswith("≈ $0.019 per 1M predictions on m6i.large (on-demand; spot ≈ $0.0056–$0.013)")
    assert est["prices"]["as_of"] == ec2_prices.AS_OF and len(est["assumptions"]) >= 5


def test_money_reads_well():
    assert [cost.money(x) for x in (1234.5, 12.345, 0.4149, 0.0053)] == ["$1,234", "$12.35", "$0.41", "$0.0053"]


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_cost_meter_counts_cpu_and_2xx_from_the_end_of_the_load():
    metrics, clock = Metrics(), _Clock()
    spec = load_api_spec(APIS / "kmeans")
    runtime = SimpleNamespace(name="kmeans", asynchronous=False, folder=APIS / "kmeans", spec=spec)
    api = metrics.for_api("kmeans")
    for _ in range(5):
        api.observe(200, 0.01)  # answered while loading? no: before `loaded`, not counted
    meter = cost.CostMeter(ROOT / "Pulumi.dev.yaml", clock=clock)
    assert meter.describe(runtime, metrics)["measured"] is False
    meter.loaded(runtime, metrics)
    assert meter.describe(runtime, metrics)["cpu_seconds_per_prediction"] is None
    for _ in range(40):
        api.observe(200, 0.01)
    for _ in range(10):
        api.observe(503, 0.0)  # refused: not a prediction
    clock.now += 0.08
    out = meter.describe(runtime, metrics)
    assert out["predictions"] == 40 and out["cpu_seconds_per_prediction"] == pytest.approx(0.002)
    assert out["estimate"]["instance_type"] == "m6i.large"
    assert out["estimate"]["per_million_dollars"] == pytest.approx(
        cost.estimate(0.002, cost.read_placement(ROOT / "Pulumi.dev.yaml", APIS / "kmeans", spec))["per_million_dollars"])
    # No stack: the measurement without dollars.
    plain = cost.CostMeter(None, clock=clock)
    plain.loaded(runtime, metrics)
    api.observe(200, 0.01)
    clock.now += 0.01
    assert "estimate" not in plain.describe(runtime, metrics) and plain.describe(runtime, metrics)["predictions"] == 1


def test_cost_meter_counts_an_asyncapis_completed_jobs():
    from myelin.asyncapi.metrics import JobMetrics

    metrics, clock = Metrics(), _Clock()
    runtime = SimpleNamespace(name="hp", asynchronous=True, folder=APIS / "hyperparameter-search",
                              spec=load_api_spec(APIS / "hyperparameter-search"))
    jobs = JobMetrics(metrics, "hp")
    meter = cost.CostMeter(None, clock=clock)
    meter.loaded(runtime, metrics)
    metrics.for_api("hp").observe(202, 0.001)  # a submit: not a prediction
    for status in (c.JOB_SUBMITTED, c.JOB_COMPLETED, c.JOB_COMPLETED, c.JOB_FAILED):
        jobs.count(status)
    clock.now += 1.0
    out = meter.describe(runtime, metrics)
    assert out["predictions"] == 2 and out["cpu_seconds_per_prediction"] == pytest.approx(0.5)


def test_the_cli_refuses_a_stack_it_cannot_find():
    out = subprocess.run([sys.executable, "-m", "myelin.cli", "serve", str(APIS / "kmeans"), "--stack", "nope"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode != 0 and "--stack nope: no Pulumi.nope.yaml in" in out.stderr


def test_stack_names_resolve_above_the_api_folder(tmp_path):
    assert cost.resolve_stack_file("dev", [tmp_path, APIS / "kmeans"]) == ROOT / "Pulumi.dev.yaml"
    assert cost.resolve_stack_file(str(ROOT / "Pulumi.prod.yaml"), []) == ROOT / "Pulumi.prod.yaml"
