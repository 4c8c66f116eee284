"""Every query Myelin ships, proven against a real Prometheus scraping a real `myelin serve` (processes=2).

The KEDA trigger string, the alert rules and the dashboards are the ones the Pulumi program emits for a
stack deploying tests/observability/apis/observed (see harness.py). Under a bounded load (4 clients, one
asking for failures, then a burst past the admission limits), each expression must return series with the
labels its consumers group by, the in-flight query must track the load, and Prometheus must evaluate every
alert rule without error.

`MYELIN_DASHBOARD_PNG=docs/dashboard-api.png` also renders the per-API dashboard's main panels from this
run's data (`make docs-images`).
"""

from __future__ import annotations

import os
import time

import httpx
import pytest

from components.observability import queries
from components.observability.rules import AlertsConfig, alerts
from myelin import contract

from .harness import API, ObservedStack, Load, burst

CLIENTS = 4  # one of them sends requests that fail
WINDOW = "10s"  # $__rate_interval for the dashboard queries (scrapes every second)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from system_packages import ensure

    prometheus = ensure("prometheus", "prometheus")
    stack = ObservedStack(tmp_path_factory.mktemp("observed"))
    try:
        stack.start(prometheus)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def loaded(stack):
    """Steady load for longer than the autoscaling window, then a burst; the load keeps running for the queries."""
    start = time.time()
    # One request held while the replica started (its ALB trace header says it arrived before the server began):
    # a cold start, as the API (scaled to zero) exports it in the cluster.
    held = httpx.post(stack.api_url, json={"x": 1},
                      headers={"x-amzn-trace-id": f"Root=1-{int(stack.started_at) - 2:08x}-0123456789abcdef01234567"})
    assert held.status_code in (200, 503), held.text
    load = Load(stack.api_url, CLIENTS).start()
    window_s = int(stack.emitted.keda_query.split("[")[1].split("s]")[0])
    time.sleep(window_s + 3)
    keda = stack.query(stack.emitted.keda_query)
    in_flight_now = stack.query(f'sum({contract.IN_FLIGHT}{{api="{API}"}})')
    burst_statuses = burst(stack.api_url, 40)
    time.sleep(4)  # two scrapes and rule evaluations after the burst
    yield {"start": start, "keda": keda, "in_flight_now": in_flight_now, "burst": burst_statuses, "load": load}
    statuses = load.stop()
    print(f"\nobservability e2e: steady load {statuses}, burst {burst_statuses}")
    png = os.environ.get("MYELIN_DASHBOARD_PNG")
    if png:
        from .render import render_api_dashboard

        render_api_dashboard(stack, start, time.time(), png)


def _labels(series: list[dict]) -> set[str]:
    return {k for s in series for k in s["metric"]}


def test_series_carry_the_cluster_labels(stack, loaded):
    series = stack.query(f'{contract.REQUESTS_TOTAL}{{api="{API}"}}')
    assert series
    for s in series:
        m = s["metric"]
        assert m["namespace"] == "apis" and m["pod"].startswith(f"{API}-") and m["node"].startswith("ip-")
        assert m["app_kubernetes_io_name"] == API and m["job"] == "kubernetes-pods"


def test_keda_query_tracks_the_load(stack, loaded):
    (series,) = loaded["keda"]
    value = float(series["value"][1])
    # CLIENTS requests are always running or queued, less the moments a client spends between requests.
    assert CLIENTS * 0.6 <= value <= CLIENTS + 0.5, f"{stack.emitted.keda_query} = {value}, load was {CLIENTS}"
    (now,) = loaded["in_flight_now"]
    assert CLIENTS * 0.5 <= float(now["value"][1]) <= CLIENTS


def test_the_burst_met_admission_control(loaded):
    assert loaded["burst"].get(503, 0) > 0 and loaded["burst"].get(200, 0) > 0, loaded["burst"]


def _dashboard_exprs(stack) -> list[tuple[str, str, str]]:
    """(dashboard, panel, expr) for every target of every provisioned dashboard, variables substituted."""
    out = []
    for name, board in stack.emitted.dashboards.items():
        for panel in board["panels"]:
            for target in panel["targets"]:
                expr = target["expr"].replace(queries.API_VAR, API).replace(queries.RATE_WINDOW_VAR, WINDOW)
                out.append((name, panel["title"], expr))
    return out


def test_every_dashboard_query_returns_data_with_its_labels(stack, loaded):
    expected = {p.expr.replace(queries.API_VAR, API).replace(queries.RATE_WINDOW_VAR, WINDOW): p
                for p in queries.api_panels() + queries.cluster_panels()}
    exprs = _dashboard_exprs(stack)
    assert len(exprs) == len(expected)
    empty = []
    for board, title, expr in exprs:
        series = stack.wait_for(expr, timeout=10)
        if not series:
            empty.append(f"{board} / {title}: {expr}")
            continue
        missing = set(expected[expr].labels) - _labels(series)
        assert not missing, f"{board} / {title}: {expr} lacks labels {missing}: {series}"
    assert not empty, "queries without data:\n" + "\n".join(empty)


def test_api_dashboard_values_match_the_load(stack, loaded):
    by_status = {s["metric"]["status"]: float(s["value"][1]) for s in stack.query(
        f'sum by (status) (rate({contract.REQUESTS_TOTAL}{{api="{API}"}}[{WINDOW}]))')}
    assert by_status.get("200", 0) > 0 and by_status.get("500", 0) > 0
    (target,) = stack.query(f'max({contract.TARGET_IN_FLIGHT}{{api="{API}"}})')
    assert float(target["value"][1]) == 4.0  # autoscaling.target_in_flight in the test API's api.yaml
    reasons = {s["metric"]["reason"] for s in stack.query(
        f'sum by (reason) (increase({contract.REJECTED_TOTAL}{{api="{API}"}}[1m]))')}
    assert contract.REJECT_OVERLOADED in reasons
    (batch,) = stack.query(f'sum(rate({contract.BATCH_SIZE}_sum{{api="{API}"}}[1m])) '
                           f'/ sum(rate({contract.BATCH_SIZE}_count{{api="{API}"}}[1m]))')
    assert 1.0 <= float(batch["value"][1]) <= 4.0  # batching.max_batch_size


def test_every_alert_signal_returns_data_with_its_labels(stack, loaded):
    for alert in alerts(AlertsConfig()):
        series = stack.wait_for(alert.signal, timeout=10)
        assert series, f"{alert.name}: no data for {alert.signal}"
        if alert.source == "myelin":
            assert {"namespace", "api"} <= _labels(series), f"{alert.name}: {series}"


def test_prometheus_evaluates_every_rule_without_error(stack, loaded):
    body = httpx.get(f"{stack.prom_url}/api/v1/rules", timeout=10).json()
    rules = [r for g in body["data"]["groups"] for r in g["rules"]]
    names = {r["name"] for r in rules if r["type"] == "alerting"}
    assert names == {a.name for a in alerts(AlertsConfig())}
    for rule in rules:
        assert rule["health"] == "ok" and not rule.get("lastError"), rule
    thresholds = [r for r in rules if r["type"] == "recording"]
    assert [r["labels"]["api"] for r in thresholds] == [API]


def test_alerts_fire_on_this_load(stack, loaded):
    """A quarter of the requests fail (5xx ratio ≫ 5%): the real error-ratio expression holds for this API;
    the synthetic GPU pod is Pending: the GPU alert's expression holds for it."""
    rules = {a.name: a.expr for a in alerts(AlertsConfig())}
    (errors,) = stack.wait_for(rules["MyelinHighErrorRatio"], timeout=15)
    assert errors["metric"]["api"] == API and errors["metric"]["namespace"] == "apis"
    pending = stack.query(rules["MyelinGpuPodPending"])
    assert [s["metric"]["pod"] for s in pending] == ["sentence-embedding-5b7d9c6f4-k8m2p"]
    assert stack.query(rules["MyelinLogDeliveryFailing"]) == []  # no delivery errors: quiet


def test_the_cold_start_of_an_api_scaled_to_zero_is_measured_and_estimated(stack, loaded):
    """The held request counted one cold start; the cold-start responder's Retry-After query reads it back."""
    from myelin.cold_start import mean_cold_start_query

    (count,) = stack.wait_for(f'sum({contract.COLD_STARTS_TOTAL}{{api="{API}"}})')
    assert float(count["value"][1]) == 1.0  # once per replica, though it runs two processes
    (mean,) = stack.wait_for(mean_cold_start_query(API))
    seconds = float(mean["value"][1])
    assert 1.0 <= seconds <= 60.0, seconds  # from the request's arrival (before the server started) to readiness
