"""Every query Myelin ships, proven against a real Prometheus scraping real `myelin serve` processes.

The KEDA trigger string, the alert rules and the dashboards are the ones the Pulumi program emits for a
stack deploying tests/observability/apis/observed, .../streamed, .../shadowed and the splitter .../split (see
harness.py); an AsyncAPI
(.../queued) is served and scraped beside them. Under a bounded load (4 clients of `observed`, one asking
for failures, then a burst past the admission limits; 2 clients streaming from `streamed`; a job every
0.2 s submitted to `queued`, after one job that fails and one whose process dies; 2 clients, one asking its shadow to
fail, on the path of the TrafficSplitter `split`, answered by `streamed` and copied to `shadowed`, after a few
requests too large for the shadow), each dashboard panel, evaluated
for an API of the kind it is for, and each alert signal must return series with the labels its consumers
group by, the in-flight query must track the load, and Prometheus must evaluate every alert rule without error.

`MYELIN_DASHBOARD_PNG=docs/images/dashboard-api.png` also renders the per-API dashboard's main panels from this
run's data (`make docs-images`).
"""

from __future__ import annotations

import os
import time

import httpx
import pytest

from components.observability import cost, queries
from components.observability.rules import LATENCY_THRESHOLD_RECORD, AlertsConfig, alerts, async_workers_ready
from myelin import contract

from .harness import API, QUEUED, SHADOWED, SPLIT, STREAMED, Jobs, Load, ObservedStack, burst

# The in-flight and KEDA values are checked against the load's client count: no other test's load beside it.
pytestmark = pytest.mark.solo

CLIENTS = 4  # one of them sends requests that fail
STREAM_CLIENTS = 2
#: The API each kind of panel is evaluated for.
API_OF_KIND = {queries.REALTIME: API, queries.STREAMING: STREAMED, queries.ASYNC: QUEUED, queries.SPLITTER: SPLIT}
#: Each provisioned dashboard (Grafana's name for it) and the panels it is built from.
PANELS_OF = {"myelin-api": queries.api_panels, "myelin-asyncapi": queries.async_panels,
             "myelin-cluster": queries.cluster_panels, "myelin-traffic-splitting": queries.splitter_panels}
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
    # The AsyncAPI first gets a job that fails and one whose process dies mid-job (started again after its
    # visibility timeout, past jobs.max_attempts 1: dead-lettered), then a steady flow of jobs.
    jobs = Jobs(stack.url(QUEUED))
    with httpx.Client(timeout=15) as client:
        failing = jobs.submit(client, {"fail": True})
        dying = jobs.submit(client, {"die": True})
    assert failing and dying, jobs.statuses
    jobs.start()
    streams = Load(stack.url(STREAMED), STREAM_CLIENTS, failing=0).start()
    # Through the splitter: a few requests larger than the shadow's max_body_size (answered, not copied), then
    # two clients, one of them asking for failures (`streamed` ignores it; its copy fails at the shadow).
    with httpx.Client(timeout=15) as client:
        too_large = [client.post(stack.split_url(), json={"pad": "x" * 2048}).status_code for _ in range(3)]
    assert too_large == [200] * 3, too_large
    splits = Load(stack.split_url(), 2, failing=1).start()
    load = Load(stack.api_url, CLIENTS).start()
    window_s = int(stack.emitted.keda_query.split("[")[1].split("s]")[0])
    time.sleep(window_s + 3)
    keda = stack.query(stack.emitted.keda_query)
    in_flight_now = stack.query(f'sum({contract.IN_FLIGHT}{{api="{API}"}})')
    burst_statuses = burst(stack.api_url, 40)
    time.sleep(4)  # two scrapes and rule evaluations after the burst
    yield {"start": start, "keda": keda, "in_flight_now": in_flight_now, "burst": burst_statuses, "load": load,
           "failing": failing, "dying": dying, "splits": splits}
    statuses = load.stop()
    print(f"\nobservability e2e: KEDA query {keda[0]['value'][1] if keda else None}, steady load {statuses}, "
          f"burst {burst_statuses}, streams {streams.stop()}, through the splitter {splits.stop()}, "
          f"jobs {jobs.stop()}")
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


def _dashboard_exprs(stack) -> list[tuple[str, str, str, queries.Panel]]:
    """(dashboard, panel title, expr, Panel) for every target of every provisioned dashboard, its variables
    substituted: `$api` by the served API of the kind the panel is for."""
    assert set(stack.emitted.dashboards) == set(PANELS_OF)
    out = []
    for name, board in stack.emitted.dashboards.items():
        panels = {p.expr: p for p in PANELS_OF[name]()}
        for panel in board["panels"]:
            for target in panel["targets"]:
                built = panels[target["expr"]]
                expr = (target["expr"].replace(queries.API_VAR, API_OF_KIND[built.for_api])
                        .replace(queries.SPLITTER_VAR, SPLIT).replace(queries.RATE_WINDOW_VAR, WINDOW))
                out.append((name, panel["title"], expr, built))
    return out


def test_every_dashboard_query_returns_data_with_its_labels(stack, loaded):
    exprs = _dashboard_exprs(stack)
    assert len(exprs) == sum(len(panels()) for panels in PANELS_OF.values())  # every panel, each once
    assert {built.for_api for *_, built in exprs} == set(API_OF_KIND)
    empty = []
    for board, title, expr, built in exprs:
        series = stack.wait_for(expr, timeout=10)
        if not series:
            empty.append(f"{board} / {title}: {expr}")
            continue
        missing = set(built.labels) - _labels(series)
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


def test_the_splitting_dashboard_shows_the_split_and_the_shadow(stack, loaded):
    """Every request on the splitter's path went to `streamed` (weight 100): a share of 1; the shadow answered
    the copies (200, and 500 for the failing client's), and the requests too large for it were counted as drops."""
    panels = {p.key: p.expr.replace(queries.SPLITTER_VAR, SPLIT).replace(queries.RATE_WINDOW_VAR, WINDOW)
              for p in queries.splitter_panels()}
    (share,) = stack.wait_for(panels["split_share"], timeout=10)
    assert share["metric"] == {"api": STREAMED} and float(share["value"][1]) == 1.0
    statuses = {s["metric"]["status"] for s in stack.query(
        f'sum by (status) ({contract.SHADOW_REQUESTS_TOTAL}{{splitter="{SPLIT}",api="{SHADOWED}"}})')}
    assert {"200", "500"} <= statuses, statuses
    (dropped,) = stack.query(f'sum by (reason) ({contract.SHADOW_DROPPED_TOTAL}{{splitter="{SPLIT}"}})')
    assert dropped["metric"] == {"reason": "too_large"} and float(dropped["value"][1]) == 3.0
    (failed,) = stack.query(panels["shadow_error_ratio"])
    assert 0.2 < float(failed["value"][1]) < 0.8, failed  # one client of two asks the shadow to fail
    # The shadow's own metrics count the copies as its requests.
    assert stack.query(f'sum({contract.REQUESTS_TOTAL}{{api="{SHADOWED}",status="500"}})')


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
    assert names == {a.name for a in alerts(AlertsConfig())} | {cost.COST_ALERT}
    for rule in rules:
        assert rule["health"] == "ok" and not rule.get("lastError"), rule
    thresholds = [r for r in rules if r["type"] == "recording" and r["name"] == LATENCY_THRESHOLD_RECORD]
    assert [r["labels"]["api"] for r in thresholds] == sorted([API, STREAMED, SHADOWED])


def test_cost_rules_price_the_api_from_opencost_series(stack, loaded):
    """OpenCost's (synthetic) allocation of the API's pod x its node's prices, over its real 2xx rate."""
    (hourly,) = stack.wait_for(f'{cost.API_COST}{{api="{API}"}}', timeout=15)
    assert float(hourly["value"][1]) == pytest.approx(0.5 * 0.0312 + 1 * 0.0042)  # harness: 0.5 CPU, 1 GiB
    (per_second,) = stack.wait_for(f'{cost.PREDICTIONS}{{api="{API}"}}', timeout=15)
    (per_million,) = stack.wait_for(f'{cost.COST_PER_MILLION}{{api="{API}"}}', timeout=15)
    assert float(per_million["value"][1]) == pytest.approx(
        1e6 * float(hourly["value"][1]) / (3600 * float(per_second["value"][1])), rel=0.05)


def test_alerts_fire_on_this_load(stack, loaded):
    """A quarter of the requests fail (5xx ratio ≫ 5%): the real error-ratio expression holds for this API, and
    for the splitter's shadow (half its copies fail), whose own metrics count the copies; the synthetic GPU pod is
    Pending: the GPU alert's expression holds for it. Too few requests are too large for the shadow to drop 5%."""
    rules = {a.name: a.expr for a in alerts(AlertsConfig())}
    errors = stack.wait_for(rules["MyelinHighErrorRatio"], timeout=15)
    assert sorted((s["metric"]["namespace"], s["metric"]["api"]) for s in errors) == [("apis", API), ("apis", SHADOWED)]
    assert stack.query(rules["MyelinShadowDropping"]) == []
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


def test_streams_record_their_time_to_first_item(stack, loaded):
    """Each stream observed its time to first item once; the predictor sleeps 50 ms before its first item."""
    (count,) = stack.wait_for(f'sum({contract.TIME_TO_FIRST_ITEM}_count{{api="{STREAMED}"}})')
    (total,) = stack.query(f'sum({contract.TIME_TO_FIRST_ITEM}_sum{{api="{STREAMED}"}})')
    assert float(count["value"][1]) > 0
    assert float(total["value"][1]) / float(count["value"][1]) >= 0.05
    assert stack.query(f'{contract.TIME_TO_FIRST_ITEM}_count{{api="{API}"}}') == []  # not a streaming API


def _job_counts(stack) -> dict[str, float]:
    return {s["metric"]["status"]: float(s["value"][1]) for s in stack.query(
        f'sum by (status) ({contract.ASYNC_JOBS_TOTAL}{{api="{QUEUED}"}})')}


def test_the_asyncapi_fails_one_job_and_dead_letters_the_one_whose_process_died(stack, loaded):
    deadline = time.monotonic() + 45  # the visibility timeout (7 s) and a replacement process, with room to spare
    while _job_counts(stack).get(contract.JOB_DEAD_LETTERED, 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    counts = _job_counts(stack)
    assert set(counts) == set(contract.JOB_STATUSES), counts  # every status exported, 0 until it happens
    assert counts[contract.JOB_DEAD_LETTERED] == 1 and counts[contract.JOB_FAILED] == 1, counts
    assert counts[contract.JOB_COMPLETED] > 0 and counts[contract.JOB_SUBMITTED] >= counts[contract.JOB_COMPLETED] + 2
    dead = httpx.get(f"{stack.url(QUEUED)}/{loaded['dying']}", timeout=5).json()
    assert dead["status"] == "failed" and dead["error"]["type"] == "attempts_exhausted", dead
    failed = httpx.get(f"{stack.url(QUEUED)}/{loaded['failing']}", timeout=5).json()
    assert failed["status"] == "failed" and failed["error"]["type"] == "predictor_failure", failed
    # The alert's full expression holds for this API (any dead letter in the last hour pages by default).
    rules = {a.name: a.expr for a in alerts(AlertsConfig())}
    (fired,) = stack.wait_for(rules["MyelinAsyncJobsDeadLettered"], timeout=10)
    assert fired["metric"] == {"namespace": "apis", "api": QUEUED}


def test_the_asyncapi_worker_join_matches_the_queue(stack, loaded):
    """MyelinAsyncQueueNoWorker subtracts APIs whose worker Deployment (<api>-worker) has a ready replica: the
    kube-state-metrics side, relabelled, joins the runtime's queue depth on (namespace, api). Its workers are
    ready here, so the alert is quiet."""
    (alert,) = [a for a in alerts(AlertsConfig()) if a.name == "MyelinAsyncQueueNoWorker"]
    joined = stack.wait_for(f"({alert.signal}) and on (namespace, api) ({async_workers_ready()})")
    assert [s["metric"] for s in joined] == [{"namespace": "apis", "api": QUEUED}]
    assert stack.query(alert.expr) == []
