"""Grafana dashboards built from `queries`, committed as JSON under `dashboards/` and provisioned from there.

`python -m components.observability.dashboards` rewrites the JSON files; a test fails when they differ
from what this module builds (so a query changed here is never left out of a committed dashboard).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from myelin import contract as c

from .queries import Panel, api_panels, async_panels, cluster_panels, splitter_panels

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"
DATASOURCE_UID = "prometheus"  # the uid the Grafana add-on gives its Prometheus data source
DATASOURCE = {"type": "prometheus", "uid": DATASOURCE_UID}
SCHEMA_VERSION = 41  # Grafana 12's dashboard schema


def _timeseries(panel_id: int, x: int, y: int, w: int, h: int, title: str, targets: list[Panel],
                unit: str, stack: bool = False) -> dict[str, Any]:
    return {
        "id": panel_id, "type": "timeseries", "title": title, "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"stacking": {"mode": "normal" if stack else "none"}}},
                        "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": p.expr, "legendFormat": p.legend or p.title}
            for i, p in enumerate(targets)
        ],
    }


def _layout(groups: list[tuple[str, list[Panel], str, bool]]) -> list[dict[str, Any]]:
    """Two panels per row, each group of queries one panel."""
    panels = []
    for i, (title, targets, unit, stack) in enumerate(groups):
        panels.append(_timeseries(i + 1, (i % 2) * 12, (i // 2) * 8, 12, 8, title, targets, unit, stack))
    return panels


def _dashboard(uid: str, title: str, panels: list[dict[str, Any]], variables: list[dict[str, Any]],
               description: str) -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "description": description, "tags": ["myelin"], "editable": False,
        "schemaVersion": SCHEMA_VERSION, "version": 1, "refresh": "30s", "timezone": "browser",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": variables}, "annotations": {"list": []}, "panels": panels,
    }


def api_dashboard() -> dict[str, Any]:
    p = {panel.key: panel for panel in api_panels()}
    groups = [
        ("Requests/s by status", [p["requests_by_status"]], "reqps", True),
        ("5xx ratio", [p["error_ratio"]], "percentunit", False),
        ("Latency", [p["latency_p50"], p["latency_p95"], p["latency_p99"]], "s", False),
        ("In flight per replica vs autoscaling target", [p["in_flight_per_replica"], p["target_in_flight"]],
         "short", False),
        ("Queued requests", [p["queue_length"]], "short", False),
        ("503s by reason (admission, not ready, draining)", [p["admission_rejections"]], "reqps", True),
        ("Batching: mean batch size and batches/s", [p["batch_size_mean"], p["batches_per_second"]], "short", False),
        ("Replicas: desired, ready, serving", [p["replicas_desired"], p["replicas_ready"], p["ready_pods"]],
         "short", False),
        ("Scale to zero: replicas woken (1h) and requests at the interceptor", [p["cold_starts"], p["held_requests"]],
         "short", False),
        ("Scale to zero: mean cold start (1d)", [p["cold_start_mean"]], "s", False),
        ("Streaming: time to first item", [p["first_item_p50"], p["first_item_p99"]], "s", False),
        # What it costs (OpenCost allocation x node prices; components/observability/cost.py).
        ("Cost per hour: allocation, and idle share of its nodes", [p["api_cost_per_hour"], p["api_idle_cost_per_hour"]],
         "currencyUSD", False),
        ("Cost per 1M predictions", [p["api_cost_per_million"]], "currencyUSD", False),
        ("Cost per hour by resource (CPU, memory, GPU)", [p["api_cost_by_resource"]], "currencyUSD", True),
    ]
    return _dashboard("myelin-api", "Myelin / API", _layout(groups), [_api_variable(c.REQUESTS_TOTAL)],
                      "One API: traffic, errors, latency, in-flight against the autoscaling target, queue, "
                      "admission refusals, batching, replicas and, for an API scaled to zero, its cold starts; for "
                      "a streaming API, the time to its first item; what it costs per hour and per 1M predictions. AsyncAPI jobs: the Myelin / AsyncAPI dashboard.")


def _api_variable(metric: str) -> dict[str, Any]:
    """The `api` variable: the values of the `api` label of `metric`."""
    return {
        "name": "api", "label": "API", "type": "query", "datasource": DATASOURCE, "refresh": 2, "sort": 1,
        "query": {"query": f"label_values({metric}, {c.LABEL_API})", "refId": "api"},
        "definition": f"label_values({metric}, {c.LABEL_API})",
        "includeAll": False, "multi": False, "current": {},
    }


def async_dashboard() -> dict[str, Any]:
    p = {panel.key: panel for panel in async_panels()}
    groups = [
        ("Jobs waiting (queue depth)", [p["async_queue_depth"]], "short", False),
        ("Jobs/s by status", [p["async_jobs_by_status"]], "ops", False),
        ("Failed and dead-lettered share of finished jobs", [p["async_failed_ratio"]], "percentunit", False),
        ("Job duration (one attempt): p50, p99", [p["async_job_p50"], p["async_job_p99"]], "s", False),
        ("Replicas: workers desired, workers ready, gateway ready",
         [p["async_workers_desired"], p["async_workers_ready"], p["async_gateway_ready"]], "short", False),
        ("Gateway requests/s by status (submits and status reads)", [p["async_gateway_requests"]], "reqps", True),
    ]
    # Only AsyncAPIs export the queue depth: the variable lists them and nothing else.
    return _dashboard("myelin-asyncapi", "Myelin / AsyncAPI", _layout(groups), [_api_variable(c.ASYNC_QUEUE_DEPTH)],
                      "One AsyncAPI: jobs waiting, jobs by outcome, the failed and dead-lettered share, job duration, "
                      "its workers (Deployment <api>-worker) and gateway (Deployment <api>).")


def splitter_dashboard() -> dict[str, Any]:
    p = {panel.key: panel for panel in splitter_panels()}
    groups = [
        ("Observed split: share of the splitter's requests per API", [p["split_share"]], "percentunit", True),
        ("Requests/s per API (through the splitter)", [p["split_requests"]], "reqps", True),
        ("Shadow copies/s by status", [p["shadow_copies_by_status"]], "reqps", True),
        ("Requests not copied to the shadow/s by reason", [p["shadow_drops_by_reason"]], "reqps", True),
        ("Shadow: failed share of its copies (5xx, error, timeout)", [p["shadow_error_ratio"]], "percentunit", False),
        ("Weighted APIs: 5xx ratio (all their requests)", [p["weighted_error_ratio"]], "percentunit", False),
    ]
    variable = {
        "name": "splitter", "label": "Splitter", "type": "query", "datasource": DATASOURCE, "refresh": 2, "sort": 1,
        "query": {"query": f"label_values({c.SPLIT_REQUESTS_TOTAL}, {c.LABEL_SPLITTER})", "refId": "splitter"},
        "definition": f"label_values({c.SPLIT_REQUESTS_TOTAL}, {c.LABEL_SPLITTER})",
        "includeAll": False, "multi": False, "current": {},
    }
    return _dashboard("myelin-traffic-splitting", "Myelin / Traffic splitting", _layout(groups), [variable],
                      "One TrafficSplitter: the share of its requests each API answered (against its weights), "
                      "requests/s per API, its shadow's copies by status, the requests not copied by reason, the "
                      "shadow's failed share and the weighted APIs' 5xx ratio. Each API's own latency and errors: "
                      "the Myelin / API dashboard.")


def cluster_dashboard() -> dict[str, Any]:
    p = {panel.key: panel for panel in cluster_panels()}
    groups = [
        ("Nodes by pool and capacity type", [p["nodes_by_pool"]], "short", True),
        ("Pending pods", [p["pending_pods"]], "short", True),
        ("GPU utilisation by node", [p["gpu_util_by_node"]], "percent", False),
        ("GPU memory used by node", [p["gpu_mem_by_node"]], "percentunit", False),
        ("GPU utilisation by API", [p["gpu_util_by_api"]], "percent", False),
        ("Log delivery errors (Fluent Bit → CloudWatch)", [p["log_delivery_errors"]], "ops", False),
    ]
    panels = _layout(groups)
    y = max(q["gridPos"]["y"] + q["gridPos"]["h"] for q in panels)
    panels += [_bargauge(len(panels) + 1, 0, y, "APIs by cost per hour (allocation)", p["apis_by_cost"]),
               _bargauge(len(panels) + 2, 12, y, "APIs by cost per 1M predictions", p["apis_by_cost_per_million"])]
    return _dashboard("myelin-cluster", "Myelin / Cluster", panels, [],
                      "Capacity (node pools, spot/on-demand, pending pods), GPUs (DCGM exporter), log delivery and "
                      "the APIs ranked by what they cost.")


def _bargauge(panel_id: int, x: int, y: int, title: str, target: Panel) -> dict[str, Any]:
    """A ranked list: one bar per series of an instant query (sorted by the query), last value."""
    return {
        "id": panel_id, "type": "bargauge", "title": title, "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": 12, "h": 8},
        "fieldConfig": {"defaults": {"unit": target.unit, "min": 0}, "overrides": []},
        "options": {"orientation": "horizontal", "displayMode": "basic", "showUnfilled": True,
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
        "targets": [{"refId": "A", "datasource": DATASOURCE, "expr": target.expr, "legendFormat": target.legend,
                     "instant": True}],
    }


DASHBOARDS = {"myelin-api.json": api_dashboard, "myelin-asyncapi.json": async_dashboard,
              "myelin-cluster.json": cluster_dashboard, "myelin-traffic-splitting.json": splitter_dashboard}


def render(name: str) -> str:
    return json.dumps(DASHBOARDS[name](), indent=2, ensure_ascii=False) + "\n"


def write_all(folder: Path = DASHBOARD_DIR) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in DASHBOARDS:
        path = folder / name
        path.write_text(render(name), encoding="utf-8")
        written.append(path)
    return written


def load_all(folder: Path = DASHBOARD_DIR) -> dict[str, str]:
    """The committed dashboards (file name -> JSON text), as the Grafana add-on provisions them."""
    return {path.name: path.read_text(encoding="utf-8") for path in sorted(folder.glob("*.json"))}


if __name__ == "__main__":
    for path in write_all():
        print(f"wrote {path}", file=sys.stderr)
