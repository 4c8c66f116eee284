"""What a prediction costs, in the cluster (issue 23): OpenCost installed from its pinned chart and wired to the
stack's Prometheus, the cost recording rules proven by `promtool test rules`, the per-API alert thresholds from
the stack config, and the dashboards that show them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from components import versions
from components.config import StackConfigError, load_settings
from components.observability import cost, dashboards, rules
from components.observability.rules import AlertsConfig

from .harness import REPO, run_program, unwrap_secrets, user_config

PROMTOOL_TESTS = REPO / "tests" / "infra" / "promtool" / "myelin-cost.test.yml"
TEST_APIS = ["embed", "hyper", "iris", "kmeans", "quiet"]


@pytest.fixture(scope="module")
def promtool() -> str:
    from system_packages import ensure

    return ensure("promtool", "prometheus")


def _release(run, chart: str) -> dict:
    (release,) = [unwrap_secrets(r.inputs) for r in run.of_type("kubernetes:helm.sh/v3:Release")
                  if r.inputs["chart"] == chart]
    return release


def _promtool_test(promtool: str, tmp_path, rule_text: str) -> subprocess.CompletedProcess:
    shutil.copy(PROMTOOL_TESTS, tmp_path / PROMTOOL_TESTS.name)
    (tmp_path / "myelin-cost.yml").write_text(rule_text)
    thresholds = cost.thresholds(1.0, {"embed": 5.0}, TEST_APIS)
    (tmp_path / "thresholds.yml").write_text(rules.dump({"groups": [{"name": "t", "rules": thresholds}]}))
    return subprocess.run([promtool, "test", "rules", PROMTOOL_TESTS.name], capture_output=True, text=True,
                          cwd=tmp_path)


# -- the rules -------------------------------------------------------------------------------------------------


def test_committed_cost_rules_are_the_render_of_cost_py():
    assert cost.RULES_FILE.read_text() == cost.HEADER + rules.dump(cost.committed_rules()), (
        "components/observability/rules/myelin-cost.yml is stale: run `python -m components.observability.cost`")


def test_record_names_are_the_issues(promtool):
    records = {r["record"] for g in cost.committed_rules()["groups"] for r in g["rules"] if "record" in r}
    assert {"myelin:api_cost_dollars_per_hour", "myelin:predictions_per_second",
            "myelin:cost_per_million_predictions_dollars", "myelin:api_idle_cost_dollars_per_hour"} <= records
    assert not any("mylin" in r for r in records)
    out = subprocess.run([promtool, "check", "rules", str(cost.RULES_FILE)], capture_output=True, text=True)
    assert out.returncode == 0 and "SUCCESS: 13 rules found" in out.stdout, out.stdout + out.stderr


def test_promtool_cost_rules_give_each_stated_value(promtool, tmp_path):
    out = _promtool_test(promtool, tmp_path, cost.RULES_FILE.read_text())
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("mutation", [
    # cost per 1M without the `> 0` guard: an API that served nothing gets +Inf instead of no series
    (" (3600 * (myelin:predictions_per_second > 0))", " (3600 * myelin:predictions_per_second)"),
    # predictions from every 2xx, the AsyncAPI's gateway's submits and status reads included
    (" or (sum by (api) (rate(myelin_requests_total{status=~\"2..\"}[5m]))\n      unless on (api) group by (api) "
     "(myelin_async_queue_depth))", " or sum by (api) (rate(myelin_requests_total{status=~\"2..\"}[5m]))"),
    # pods mapped to APIs without deduplicating kube_pod_labels (two exporters of it)
    ("max by (namespace, pod, api) (label_replace(kube_pod_labels", "(label_replace(kube_pod_labels"),
])
def test_the_promtool_tests_catch_a_broken_rule(promtool, tmp_path, mutation):
    text = cost.RULES_FILE.read_text()
    old, new = mutation
    assert old in text
    out = _promtool_test(promtool, tmp_path, text.replace(old, new))
    assert out.returncode != 0, out.stdout


# -- thresholds from the stack config -------------------------------------------------------------------------


def test_alert_thresholds_come_from_the_stack_config():
    groups = cost.alert_rule_groups(2.0, {"kmeans": 0.5}, ["kmeans", "iris-classifier"])
    assert groups[0]["rules"] == [
        {"record": cost.COST_THRESHOLD_RECORD, "expr": "vector(2)", "labels": {"api": "iris-classifier"}},
        {"record": cost.COST_THRESHOLD_RECORD, "expr": "vector(0.5)", "labels": {"api": "kmeans"}},
    ]
    assert groups[1] == cost.alert_group()
    # No default: only the APIs given a threshold can fire.
    assert [r["labels"]["api"] for r in cost.thresholds(None, {"kmeans": 0.5}, ["kmeans", "iris"])] == ["kmeans"]
    assert cost.thresholds(None, {}, ["kmeans"]) == []


def _raw(stack: str = "dev") -> dict:
    return {k.removeprefix("myelin:"): v for k, v in user_config(stack).items() if k.startswith("myelin:")}


@pytest.mark.parametrize("alerts, message", [
    ({"cost_per_million_predictions_dollars_by_api": {"no-such-api": 1.0}},
     r"Pulumi.dev.yaml: myelin:observability.alerts.cost_per_million_predictions_dollars_by_api.no-such-api: "
     r"no deployed API"),
    ({"cost_per_million_predictions_dollars_by_api": {"kmeans": 0}},
     r"myelin:observability.alerts.cost_per_million_predictions_dollars_by_api: .*kmeans: must be a number of "
     r"dollars greater than 0"),
    ({"cost_per_million_predictions_dollars_by_api": {"kmeans": "cheap"}},
     r"myelin:observability.alerts.cost_per_million_predictions_dollars_by_api.kmeans: .*number"),
    ({"cost_per_million_predictions_dollars": -1}, r"myelin:observability.alerts.cost_per_million_predictions_dollars: "
                                                   r".*greater than 0"),
])
def test_bad_cost_thresholds_name_the_stack_file_and_field(alerts, message):
    bad = {**_raw(), "observability": {"alerts": alerts}}
    with pytest.raises(StackConfigError, match=message):
        load_settings(bad, "dev", "us-west-2")


def test_a_cost_alert_needs_opencost():
    bad = {**_raw(), "observability": {"cost": {"enabled": False},
                                       "alerts": {"cost_per_million_predictions_dollars": 1.0}}}
    with pytest.raises(StackConfigError, match=r"myelin:observability: .*needs cost.enabled"):
        load_settings(bad, "dev", "us-west-2")


def test_bad_spot_data_feed_names_the_field():
    bad = {**_raw(), "observability": {"cost": {"spot_data_feed": {"bucket": "b" * 3, "region": "us-west-2",
                                                                   "account_id": "12345"}}}}
    with pytest.raises(StackConfigError, match=r"myelin:observability.cost.spot_data_feed.account_id"):
        load_settings(bad, "dev", "us-west-2")


# -- OpenCost, Prometheus and Grafana in the emitted stack ---------------------------------------------------


def test_opencost_is_the_pinned_chart_wired_to_the_stacks_prometheus(run):
    release = _release(run, "opencost")
    assert (release["version"], release["repositoryOpts"]["repo"]) == (versions.OPENCOST.version, versions.OPENCOST.repo)
    assert release["namespace"] == "monitoring"
    v = release["values"]
    oc = v["opencost"]
    assert oc["prometheus"]["internal"] == {"enabled": True, "serviceName": "prometheus-server",
                                            "namespaceName": "monitoring", "port": 80}
    # What the chart's helper builds from those values is the stack's Prometheus URL.
    from components.addons import PROMETHEUS_URL

    internal = oc["prometheus"]["internal"]
    assert (f"http://{internal['serviceName']}.{internal['namespaceName']}.svc.cluster.local:{int(internal['port'])}"
            == PROMETHEUS_URL)
    assert v["service"]["annotations"] == {"prometheus.io/scrape": "true", "prometheus.io/port": "9003"}
    assert oc["metrics"]["kubeStateMetrics"] == {"emitKsmV1Metrics": False, "emitKsmV1MetricsOnly": True}
    assert oc["ui"] == {"enabled": False} and oc["mcp"] == {"enabled": False}
    assert oc["nodeSelector"] == {"myelin.dev/pool": "system"}
    assert oc["exporter"]["defaultClusterId"] == f"myelin-{run.stack}"
    # No spot data feed in the committed stacks: no IAM role, no pricing ConfigMap.
    assert "serviceAccount" not in v and "customPricing" not in oc


def test_prometheus_loads_the_cost_rules_and_alert(run):
    files = _release(run, "prometheus")["values"]["serverFiles"]
    assert files["recording_rules.yml"] == cost.cost_rule_groups()
    names = [g["name"] for g in files["alerting_rules.yml"]["groups"]]
    assert names == ["myelin-thresholds", "myelin-alerts", "myelin-cost-thresholds", "myelin-cost-alerts"]
    # Default config: no cost thresholds, so the alert has nothing to compare with.
    assert files["alerting_rules.yml"]["groups"][2]["rules"] == []


def test_a_spot_data_feed_gets_opencost_a_read_only_role_on_it():
    config = user_config("dev")
    config["myelin:observability"] = {**config.get("myelin:observability", {}), "cost": {"spot_data_feed": {
        "bucket": "acme-spot-feed", "region": "us-west-2", "prefix": "feed", "account_id": "123456789012"}},
        "alerts": {"cost_per_million_predictions_dollars_by_api": {"kmeans": 0.5}}}
    run = run_program("dev", config)
    release = _release(run, "opencost")
    v = release["values"]
    assert v["serviceAccount"]["name"] == "opencost" and v["serviceAccount"]["create"] is True
    assert "eks.amazonaws.com/role-arn" in v["serviceAccount"]["annotations"]
    pricing = v["opencost"]["customPricing"]
    assert pricing["enabled"] is True and pricing["provider"] == "aws"
    model = pricing["costModel"]
    assert (model["awsSpotDataBucket"], model["awsSpotDataRegion"], model["awsSpotDataPrefix"], model["projectID"]) == (
        "acme-spot-feed", "us-west-2", "feed", "123456789012")
    assert (model["CPU"], model["RAM"], model["GPU"]) == ("0.031611", "0.004237", "0.95")  # OpenCost's AWS ratios
    (role,) = [r.inputs for r in run.of_type("aws:iam/role:Role") if "opencost" in r.name]
    trust = json.loads(role["assumeRolePolicy"])["Statement"][0]["Condition"]["StringEquals"]
    assert "system:serviceaccount:monitoring:opencost" in trust.values()
    (policy,) = [json.loads(p.inputs["policy"]) for p in run.of_type("aws:iam/rolePolicy:RolePolicy")
                 if "opencost" in p.name]
    assert policy["Statement"] == [
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::acme-spot-feed",
         "Condition": {"StringLike": {"s3:prefix": ["feed/123456789012.*"]}}},
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::acme-spot-feed/feed/123456789012.*"},
    ]
    alerting = _release(run, "prometheus")["values"]["serverFiles"]["alerting_rules.yml"]
    assert alerting["groups"][2]["rules"] == [
        {"record": cost.COST_THRESHOLD_RECORD, "expr": "vector(0.5)", "labels": {"api": "kmeans"}}]


def test_cost_off_installs_no_opencost_and_no_cost_rules():
    config = user_config("dev")
    config["myelin:observability"] = {**config.get("myelin:observability", {}), "cost": {"enabled": False}}
    run = run_program("dev", config)
    charts = {r.inputs["chart"] for r in run.of_type("kubernetes:helm.sh/v3:Release")}
    assert "opencost" not in charts
    files = _release(run, "prometheus")["values"]["serverFiles"]
    assert "recording_rules.yml" not in files and len(files["alerting_rules.yml"]["groups"]) == 2


def test_dashboards_show_cost_per_api_and_rank_apis_by_cost():
    api = json.dumps(dashboards.api_dashboard())
    for record in (cost.API_COST, cost.COST_PER_MILLION, cost.API_COST_BY_RESOURCE, cost.API_IDLE_COST):
        assert record in api, record
    cluster = dashboards.cluster_dashboard()
    ranked = [p for p in cluster["panels"] if p["type"] == "bargauge"]
    assert [p["targets"][0]["expr"] for p in ranked] == [
        "sort_desc(sum by (api) (myelin:api_cost_dollars_per_hour))",
        "sort_desc(sum by (api) (myelin:cost_per_million_predictions_dollars))"]
    assert all(p["targets"][0]["instant"] for p in ranked)


def test_opencost_metric_names_are_the_ones_the_rules_read():
    """The series the rules read, as OpenCost 1.120 names them (verified in pkg/costmodel/metrics.go)."""
    text = cost.RULES_FILE.read_text()
    used = set(re.findall(r"\b(node_[a-z]+_hourly_cost|container_[a-z_]+allocation(?:_bytes)?)\b", text))
    assert used == {"node_cpu_hourly_cost", "node_ram_hourly_cost", "node_gpu_hourly_cost", "node_total_hourly_cost",
                    "container_cpu_allocation", "container_memory_allocation_bytes", "container_gpu_allocation"}
    # The promtool test feeds them with OpenCost's label sets.
    series = [s["series"] for t in yaml.safe_load(PROMTOOL_TESTS.read_text())["tests"] for s in t["input_series"]]
    node_labels = {"instance", "node", "instance_type", "region", "provider_id", "arch", "uid"}
    container_labels = {"namespace", "pod", "container", "instance", "node", "uid"}
    for s in series:
        name, labels = s.split("{", 1)
        keys = set(re.findall(r"(\w+)=", labels)) - {"job", "service"}
        if name.startswith("node_") and name.endswith("_hourly_cost"):
            assert keys - {"namespace"} == node_labels, s
        elif name.startswith("container_") and "allocation" in name:
            assert keys == container_labels, s
