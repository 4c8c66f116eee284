"""Dashboards, alert rules and the KEDA trigger: one set of names, committed files up to date, rules proven
by `promtool test rules`, and the add-ons that ship them (Prometheus, Alertmanager, Grafana, DCGM exporter)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from components import labels
from components.config import StackConfigError, load_settings
from components.observability import dashboards, queries, rules
from components.observability.rules import AlertsConfig
from myelin import contract

from .harness import REPO, unwrap_secrets, user_config

PROMTOOL_TESTS = REPO / "tests" / "infra" / "promtool" / "myelin-alerts.test.yml"
METRIC = re.compile(r"\b(myelin_[a-z_]+|kube_[a-z_]+|DCGM_FI_[A-Z_]+|fluentbit_[a-z_]+)\b")


@pytest.fixture(scope="module")
def promtool() -> str:
    from system_packages import ensure

    return ensure("promtool", "prometheus")


def releases(run) -> dict[str, dict]:
    return {r.inputs["chart"]: unwrap_secrets(r.inputs) for r in run.of_type("kubernetes:helm.sh/v3:Release")}


# -- committed files are the renders of the code ------------------------------------------------------


def test_committed_rules_file_is_the_render_of_rules_py():
    assert rules.RULES_FILE.read_text() == rules.HEADER + rules.dump(rules.committed_rules()), (
        "components/observability/rules/myelin-alerts.yml is stale: run `python -m components.observability.rules`")


def test_committed_dashboards_are_the_render_of_dashboards_py():
    committed = dashboards.load_all()
    assert set(committed) == set(dashboards.DASHBOARDS)
    for name in dashboards.DASHBOARDS:
        assert committed[name] == dashboards.render(name), (
            f"{name} is stale: run `python -m components.observability.dashboards`")


# -- one set of names ---------------------------------------------------------------------------------


def _known_myelin_metrics() -> set[str]:
    names = {v for k, v in vars(contract).items() if isinstance(v, str) and v.startswith(contract.METRIC_PREFIX)}
    histograms = {contract.REQUEST_DURATION, contract.BATCH_SIZE, contract.COLD_START_DURATION,
                  contract.TIME_TO_FIRST_ITEM, contract.ASYNC_JOB_DURATION}
    return names | {f"{h}_{suffix}" for h in histograms for suffix in ("bucket", "sum", "count")}


def _all_expressions() -> list[str]:
    exprs = [p.expr for p in queries.api_panels() + queries.async_panels() + queries.cluster_panels()
             + queries.splitter_panels()]
    exprs += [a.expr for a in rules.alerts(AlertsConfig())]
    exprs.append(queries.in_flight_autoscaling("x", "apis", 60))
    return exprs


def test_every_myelin_metric_in_a_query_is_a_contract_name():
    known = _known_myelin_metrics()
    used = {m for e in _all_expressions() for m in METRIC.findall(e) if m.startswith("myelin_")}
    assert used and used <= known, f"not in myelin/contract.py: {sorted(used - known)}"


def test_every_query_parses(promtool, tmp_path):
    """promtool parses each expression (as a recording rule), dashboards' variables substituted."""
    exprs = [e.replace(queries.API_VAR, "x").replace(queries.SPLITTER_VAR, "s").replace(queries.RATE_WINDOW_VAR, "1m")
             for e in _all_expressions()]
    doc = {"groups": [{"name": "parse", "rules": [{"record": f"parse:{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "parse.yml"
    path.write_text(yaml.safe_dump(doc))
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# -- alert rules ----------------------------------------------------------------------------------------


def test_promtool_checks_the_committed_rules(promtool):
    out = subprocess.run([promtool, "check", "rules", str(rules.RULES_FILE)], capture_output=True, text=True)
    assert out.returncode == 0 and "SUCCESS: 10 rules found" in out.stdout, out.stdout + out.stderr


def test_promtool_unit_tests_fire_and_stay_quiet(promtool, tmp_path):
    shutil.copy(PROMTOOL_TESTS, tmp_path / PROMTOOL_TESTS.name)
    shutil.copy(rules.RULES_FILE, tmp_path / "myelin-alerts.yml")
    thresholds = rules.latency_thresholds(AlertsConfig(latency_p99_seconds_by_api={"slow": 0.5}),
                                          ["fast", "slow", "a", "b"])
    (tmp_path / "thresholds.yml").write_text(rules.dump({"groups": [{"name": "t", "rules": thresholds}]}))
    out = subprocess.run([promtool, "test", "rules", PROMTOOL_TESTS.name], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr
    names = {t["name"] for t in yaml.safe_load(PROMTOOL_TESTS.read_text())["tests"]}
    tested = set()
    for test in yaml.safe_load(PROMTOOL_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            if case["exp_alerts"]:
                tested.add(case["alertname"])
    assert tested == {a.name for a in rules.alerts(AlertsConfig())}, "every alert needs a test where it fires"
    assert len(names) >= len(tested)


def test_thresholds_come_from_the_stack_config():
    cfg = AlertsConfig(error_ratio=0.2, latency_p99_seconds=1.0, latency_p99_seconds_by_api={"kmeans": 0.05},
                       rejections_per_second=7, gpu_pending_minutes=30, async_no_worker_minutes=45,
                       async_dead_lettered_jobs=3)
    doc = rules.alert_rules(cfg, ["kmeans", "iris-classifier"])
    thresholds = {r["labels"]["api"]: r["expr"] for r in doc["groups"][0]["rules"]}
    assert thresholds == {"iris-classifier": "vector(1)", "kmeans": "vector(0.05)"}
    alerts = {r["alert"]: r for r in doc["groups"][1]["rules"]}
    assert alerts["MyelinHighErrorRatio"]["expr"].endswith("> 0.2")
    assert alerts["MyelinAdmissionRejections"]["expr"].endswith("> 7")
    assert alerts["MyelinGpuPodPending"]["for"] == "30m"
    assert alerts["MyelinAsyncQueueNoWorker"]["for"] == "45m"
    assert alerts["MyelinAsyncJobsDeadLettered"]["expr"].endswith("> 3")
    with pytest.raises(ValueError, match="not deployed: nope"):
        rules.alert_rules(AlertsConfig(latency_p99_seconds_by_api={"nope": 1}), ["kmeans"])


def test_bad_alert_config_names_the_stack_file_and_field():
    raw = {k.removeprefix("myelin:"): v for k, v in user_config("dev").items() if k.startswith("myelin:")}
    bad = {**raw, "observability": {"alerts": {"latency_p99_seconds_by_api": {"no-such-api": 1.0}}}}
    with pytest.raises(StackConfigError, match=r"Pulumi.dev.yaml: myelin:observability.alerts.latency_p99_seconds_by_api.no-such-api: no deployed API"):
        load_settings(bad, "dev", "us-west-2")
    for receiver, message in (({"webhook_url": "http://x"}, "https://"),
                              ({"webhook_url": "https://x", "sns_topic_arn": "arn:aws:sns:us-west-2:123456789012:t"}, "not both"),
                              ({}, "set webhook_url or sns_topic_arn")):
        bad = {**raw, "observability": {"alerts": {"receiver": receiver}}}
        with pytest.raises(StackConfigError, match=re.escape("myelin:observability.alerts.receiver")) as err:
            load_settings(bad, "dev", "us-west-2")
        assert message in str(err.value)


# -- dashboards -----------------------------------------------------------------------------------------


def test_dashboard_json_is_valid_for_grafana():
    for name, text in dashboards.load_all().items():
        board = json.loads(text)
        assert board["schemaVersion"] == dashboards.SCHEMA_VERSION and board["uid"] and board["title"]
        defined = {v["name"] for v in board["templating"]["list"]}
        ids, cells = set(), set()
        for panel in board["panels"]:
            assert panel["id"] not in ids
            ids.add(panel["id"])
            assert panel["datasource"]["uid"] == dashboards.DATASOURCE_UID
            g = panel["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24
            for x in range(g["x"], g["x"] + g["w"]):  # no two panels overlap
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"{name}: panel {panel['title']} overlaps another"
                    cells.add((x, y))
            assert panel["targets"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == dashboards.DATASOURCE_UID and target["expr"]
                used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval"}
                assert used <= defined, f"{name}: {panel['title']} uses undefined variables {used - defined}"


def test_api_dashboard_answers_what_operators_ask():
    board = dashboards.api_dashboard()
    text = json.dumps(board)
    for metric in (contract.REQUESTS_TOTAL, contract.REQUEST_DURATION, contract.IN_FLIGHT, contract.TARGET_IN_FLIGHT,
                   contract.QUEUE_LENGTH, contract.REJECTED_TOTAL, contract.BATCH_SIZE, "kube_deployment_spec_replicas",
                   "kube_deployment_status_replicas_ready", contract.TIME_TO_FIRST_ITEM):
        assert metric in text, metric
    assert [v["name"] for v in board["templating"]["list"]] == ["api"]


def test_asyncapi_dashboard_answers_what_operators_ask():
    board = dashboards.async_dashboard()
    text = json.dumps(board)
    for metric in (contract.ASYNC_QUEUE_DEPTH, contract.ASYNC_JOBS_TOTAL, contract.ASYNC_JOB_DURATION,
                   contract.REQUESTS_TOTAL, contract.JOB_FAILED, contract.JOB_DEAD_LETTERED):
        assert metric in text, metric
    workers = labels.async_worker_deployment(queries.API_VAR)
    assert workers == "$api-worker"
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    assert any(f'deployment="{workers}"' in e and "kube_deployment_status_replicas_ready" in e for e in exprs)
    assert any(f'deployment="{workers}"' in e and "kube_deployment_spec_replicas" in e for e in exprs)
    (variable,) = board["templating"]["list"]
    assert variable["name"] == "api" and variable["definition"] == f"label_values({contract.ASYNC_QUEUE_DEPTH}, api)"


def test_traffic_splitting_dashboard_answers_what_operators_ask():
    board = dashboards.splitter_dashboard()
    text = json.dumps(board)
    for metric in (contract.SPLIT_REQUESTS_TOTAL, contract.SHADOW_REQUESTS_TOTAL, contract.SHADOW_DROPPED_TOTAL,
                   contract.REQUESTS_TOTAL):
        assert metric in text, metric
    (variable,) = board["templating"]["list"]
    assert variable["name"] == "splitter"
    assert variable["definition"] == f"label_values({contract.SPLIT_REQUESTS_TOTAL}, splitter)"
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    assert all('splitter="$splitter"' in e for e in exprs), "every panel is about the chosen splitter"
    titles = " ".join(p["title"] for p in board["panels"])
    for words in ("share", "Requests/s per API", "copies/s by status", "by reason", "failed share", "5xx ratio"):
        assert words in titles, words


# -- the add-ons that ship them -------------------------------------------------------------------------


def test_prometheus_loads_the_rules_for_the_stack_apis(run):
    values = releases(run)["prometheus"]["values"]
    doc = values["serverFiles"]["alerting_rules.yml"]
    apis = sorted(run.config["myelin:apis"])
    thresholds = doc["groups"][0]["rules"]
    assert [r["labels"]["api"] for r in thresholds] == sorted(
        [d["metadata"]["name"] for d in (r.inputs for r in run.api_deployments())] + run.async_apis())
    assert len(thresholds) == len(apis)
    assert doc["groups"][1] == rules.alerts_group(AlertsConfig())  # the committed file's alerts, default thresholds
    am = values["alertmanager"]
    assert am["enabled"] is True and am["persistence"] == {"enabled": False}
    assert am["config"]["route"]["receiver"] == "myelin"
    ksm = values["kube-state-metrics"]
    assert ksm["enabled"] is True
    assert "nodes=[myelin.dev/pool,myelin.dev/capacity]" in ksm["metricLabelsAllowlist"]
    assert "pods=[app.kubernetes.io/name]" in ksm["metricLabelsAllowlist"]


def test_grafana_provisions_the_committed_dashboards_with_a_secret_password(run):
    values = releases(run)["grafana"]["values"]
    (source,) = values["datasources"]["datasources.yaml"]["datasources"]
    assert source["uid"] == dashboards.DATASOURCE_UID and source["url"].startswith("http://prometheus-server.")
    provisioned = values["dashboards"]["myelin"]
    assert {f"{k}.json": v["json"] for k, v in provisioned.items()} == dashboards.load_all()
    assert values["admin"]["existingSecret"] == "grafana-admin" and "adminPassword" not in values
    (secret,) = [s for s in run.k8s("Secret") if s.inputs["metadata"]["name"] == "grafana-admin"]
    assert secret.inputs["metadata"]["namespace"] == "monitoring"
    assert "grafana_admin_password" in run.secret_outputs
    assert values["plugins"] == [] and values["grafana.ini"]["analytics"]["check_for_updates"] is False
    services = [s for s in run.k8s("Service") if s.inputs["metadata"].get("namespace") == "monitoring"]
    assert not services, "Grafana is not exposed by a Service of Myelin's own (port-forward the chart's ClusterIP)"


def test_dcgm_exporter_runs_only_on_gpu_nodes_and_is_scraped(run):
    values = releases(run)["dcgm-exporter"]
    assert values["namespace"] == "gpu-monitoring"
    v = values["values"]
    assert v["nodeSelector"] == {"myelin.dev/pool": "gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in v["tolerations"]
    assert v["service"]["annotations"]["prometheus.io/scrape"] == "true"
    assert v["serviceMonitor"]["enabled"] is False


def test_fluent_bit_metrics_are_scraped(run):
    annotations = releases(run)["aws-for-fluent-bit"]["values"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": "2020",
                           "prometheus.io/path": "/api/v1/metrics/prometheus"}


def test_keda_trigger_is_the_shared_query(run):
    # A RealtimeAPI's; an AsyncAPI's workers scale on its queue (tests/infra/test_asyncapi.py).
    for so in run.api_objects("ScaledObject"):
        name = so.inputs["metadata"]["name"]
        trigger = next(t for t in so.inputs["spec"]["triggers"] if t["type"] == "prometheus")
        assert trigger["metadata"]["query"].startswith(f'sum(avg_over_time({contract.IN_FLIGHT}{{api="{name}",namespace="apis"}}')
