"""Every PromQL expression Myelin ships, built from the names in `myelin.contract`.

The KEDA trigger, the Grafana dashboards and the alert rules all take their queries from here, so a
metric or label renamed in the runtime changes every consumer at once, and the end-to-end test
(tests/observability) proves each expression against a real Prometheus scraping a real server.

Labels as the cluster's scrape jobs attach them (prometheus chart, job `kubernetes-pods`): the runtime
sets `api` (and `status`/`reason`), Prometheus adds `namespace`, `pod`, `node` and the pod's labels
(`app_kubernetes_io_name`, ...). kube-state-metrics series carry `namespace` plus the object's name
(`deployment`, `horizontalpodautoscaler`, `pod`, `node`).
"""

from __future__ import annotations

from dataclasses import dataclass

from myelin import contract as c
from myelin.cold_start import mean_cold_start_query

from .. import labels
from ..labels import async_worker_deployment, ksm_label

API = c.LABEL_API
NS = c.LABEL_NAMESPACE

#: The dashboards' variables, substituted by Grafana (and by the tests, with concrete values).
API_VAR = "$api"
SPLITTER_VAR = "$splitter"
RATE_WINDOW_VAR = "$__rate_interval"


def _sel(**labels: str) -> str:
    """`{a="x",b=~"y"}` from keyword labels; a value starting with `~` is a regex match."""
    parts = []
    for key, value in labels.items():
        op = "=~" if value.startswith("~") else "="
        parts.append(f'{key}{op}"{value.lstrip("~")}"')
    return "{" + ",".join(parts) + "}"


# ----------------------------------------------------------------------------------------------- autoscaling
def in_flight_autoscaling(api: str, namespace: str, window_s: int) -> str:
    """KEDA's trigger: in-flight requests of the API summed over its pods, averaged over the window.

    KEDA divides it by the target (metricType AverageValue) to get the replica count.
    """
    return f"sum(avg_over_time({c.IN_FLIGHT}{_sel(**{API: api, NS: namespace})}[{window_s}s]))"


# ----------------------------------------------------------------------------------------------- per API
#: Which kind of API a panel is for (`Panel.for_api`); the end-to-end test evaluates each panel against a
#: served API of that kind. REALTIME panels read what every request-serving API exports (the batching and
#: cold-start ones show data for batched and scaled-to-zero APIs); STREAMING ones need a generator
#: `predict`; ASYNC ones need `kind: AsyncAPI`.
REALTIME = "realtime"
STREAMING = "streaming"
ASYNC = "async"
SPLITTER = "splitter"  # a TrafficSplitter's panels: `$splitter` is its name


@dataclass(frozen=True)
class Panel:
    """One dashboard panel's query: what it answers, the PromQL, the legend and the unit."""

    key: str
    title: str
    expr: str
    legend: str = ""
    unit: str = "short"
    #: Where the series comes from: "myelin" (the runtime), "kube-state-metrics", "dcgm", "fluent-bit".
    source: str = "myelin"
    #: Labels every series of this query must carry (checked by the end-to-end test).
    labels: tuple[str, ...] = ()
    #: The kind of API it shows data for: REALTIME, STREAMING, ASYNC or SPLITTER.
    for_api: str = REALTIME


def _quantile(q: float, histogram: str, selector: str, window: str) -> str:
    return f"histogram_quantile({q:g}, sum by (le) (rate({histogram}_bucket{selector}[{window}])))"


def api_panels(api: str = API_VAR, window: str = RATE_WINDOW_VAR, namespace: str = "apis") -> list[Panel]:
    """The per-API dashboard, in display order."""
    s = _sel(**{API: api})
    s5xx = _sel(**{API: api, c.LABEL_STATUS: "~5.."})
    lat = f"sum by (le) (rate({c.REQUEST_DURATION}_bucket{s}[{window}]))"
    deploy = _sel(**{NS: namespace, "deployment": api})
    return [
        Panel("requests_by_status", "Requests/s by status",
              f"sum by ({c.LABEL_STATUS}) (rate({c.REQUESTS_TOTAL}{s}[{window}]))", "{{status}}", "reqps",
              labels=(c.LABEL_STATUS,)),
        Panel("error_ratio", "5xx ratio",
              f"(sum(rate({c.REQUESTS_TOTAL}{s5xx}[{window}])) or vector(0)) / sum(rate({c.REQUESTS_TOTAL}{s}[{window}]))",
              "5xx / all", "percentunit"),
        Panel("latency_p50", "Latency p50", f"histogram_quantile(0.5, {lat})", "p50", "s"),
        Panel("latency_p95", "Latency p95", f"histogram_quantile(0.95, {lat})", "p95", "s"),
        Panel("latency_p99", "Latency p99", f"histogram_quantile(0.99, {lat})", "p99", "s"),
        Panel("in_flight_per_replica", "In flight per replica",
              f"sum({c.IN_FLIGHT}{s}) / count(count by ({c.LABEL_POD}) ({c.READY_PROCESSES}{s} > 0))",
              "in flight / ready replica"),
        Panel("target_in_flight", "Autoscaling target (in flight per replica)", f"max({c.TARGET_IN_FLIGHT}{s})",
              "target"),
        Panel("queue_length", "Queued requests", f"sum({c.QUEUE_LENGTH}{s})", "queued"),
        Panel("admission_rejections", "503s by reason",
              f"sum by ({c.LABEL_REASON}) (rate({c.REJECTED_TOTAL}{s}[{window}]))", "{{reason}}", "reqps",
              labels=(c.LABEL_REASON,)),
        Panel("batches_per_second", "Batches/s", f"sum(rate({c.BATCH_SIZE}_count{s}[{window}]))", "batches/s", "ops"),
        Panel("batch_size_mean", "Batch size mean",
              f"sum(rate({c.BATCH_SIZE}_sum{s}[{window}])) / sum(rate({c.BATCH_SIZE}_count{s}[{window}]))", "mean"),
        Panel("ready_pods", "Pods serving (from the runtime)",
              f"count(count by ({c.LABEL_POD}) ({c.READY_PROCESSES}{s} > 0))", "ready pods"),
        Panel("replicas_desired", "Replicas desired", f"max(kube_deployment_spec_replicas{deploy})", "desired",
              source="kube-state-metrics"),
        Panel("replicas_ready", "Replicas ready", f"max(kube_deployment_status_replicas_ready{deploy})", "ready",
              source="kube-state-metrics"),
        # Scale to zero (autoscaling.min_replicas 0): cold starts, how long they take (the cold-start responder's
        # Retry-After estimate), and the requests KEDA's interceptor holds or forwards for the API right now.
        # A replica counts its own cold start once, before its first scrape: max, not increase().
        Panel("cold_starts", "Replicas woken from zero (seen in the last hour)",
              f"sum(max_over_time({c.COLD_STARTS_TOTAL}{s}[1h]))", "woken replicas"),
        Panel("cold_start_mean", "Mean cold start over the last day", mean_cold_start_query(api), "mean cold start",
              "s"),
        Panel("held_requests", "Requests at the interceptor (held or in flight)",
              f'sum(interceptor_request_concurrency{_sel(route_name=api, route_namespace=namespace)})',
              "at the interceptor", source="keda-http-add-on"),
        # Streaming (a generator predict): from the request's arrival to its first item on the wire.
        Panel("first_item_p50", "Time to first item p50", _quantile(0.5, c.TIME_TO_FIRST_ITEM, s, window), "p50",
              "s", for_api=STREAMING),
        Panel("first_item_p99", "Time to first item p99", _quantile(0.99, c.TIME_TO_FIRST_ITEM, s, window), "p99",
              "s", for_api=STREAMING),
        *_cost().api_cost_panels(api),  # cost per hour, per 1M predictions, idle share, by resource
    ]


# ----------------------------------------------------------------------------------------------- per AsyncAPI
def async_panels(api: str = API_VAR, window: str = RATE_WINDOW_VAR, namespace: str = "apis") -> list[Panel]:
    """The AsyncAPI dashboard, in display order: the queue, jobs by outcome, job duration, the workers (their
    Deployment `<api>-worker`, `labels.async_worker_deployment`) and the gateway (the Deployment `<api>`)."""
    s = _sel(**{API: api})
    jobs = f"rate({c.ASYNC_JOBS_TOTAL}{{selector}}[{window}])"
    lost = _sel(**{API: api, c.LABEL_STATUS: "~" + "|".join((c.JOB_FAILED, c.JOB_DEAD_LETTERED))})
    finished = _sel(**{API: api, c.LABEL_STATUS: "~" + "|".join((c.JOB_COMPLETED, c.JOB_FAILED, c.JOB_DEAD_LETTERED))})
    workers = _sel(**{NS: namespace, "deployment": async_worker_deployment(api)})
    gateway = _sel(**{NS: namespace, "deployment": api})
    return [
        # Every process of the gateway and the workers samples the same queue: max, not sum.
        Panel("async_queue_depth", "Jobs waiting", f"max({c.ASYNC_QUEUE_DEPTH}{s})", "waiting", for_api=ASYNC),
        Panel("async_jobs_by_status", "Jobs/s by status", f"sum by ({c.LABEL_STATUS}) ({jobs.format(selector=s)})",
              "{{status}}", "ops", labels=(c.LABEL_STATUS,), for_api=ASYNC),
        Panel("async_failed_ratio", "Failed and dead-lettered share of finished jobs",
              f"sum({jobs.format(selector=lost)}) / sum({jobs.format(selector=finished)})", "failed / finished",
              "percentunit", for_api=ASYNC),
        Panel("async_job_p50", "Job duration p50", _quantile(0.5, c.ASYNC_JOB_DURATION, s, window), "p50", "s",
              for_api=ASYNC),
        Panel("async_job_p99", "Job duration p99", _quantile(0.99, c.ASYNC_JOB_DURATION, s, window), "p99", "s",
              for_api=ASYNC),
        Panel("async_workers_desired", "Worker replicas desired", f"max(kube_deployment_spec_replicas{workers})",
              "workers desired", source="kube-state-metrics", for_api=ASYNC),
        Panel("async_workers_ready", "Worker replicas ready", f"max(kube_deployment_status_replicas_ready{workers})",
              "workers ready", source="kube-state-metrics", for_api=ASYNC),
        Panel("async_gateway_ready", "Gateway replicas ready", f"max(kube_deployment_status_replicas_ready{gateway})",
              "gateway ready", source="kube-state-metrics", for_api=ASYNC),
        Panel("async_gateway_requests", "Gateway requests/s by status (submits and status reads)",
              f"sum by ({c.LABEL_STATUS}) (rate({c.REQUESTS_TOTAL}{s}[{window}]))", "{{status}}", "reqps",
              labels=(c.LABEL_STATUS,), for_api=ASYNC),
    ]


# ----------------------------------------------------------------------------------------------- per splitter
#: What a shadow's copy counts as a failure (myelin_shadow_requests_total's `status`): a 5xx answer, a refused or
#: broken connection (`error`), no answer in time (`timeout`).
SHADOW_FAILED = "~5..|error|timeout"


def splitter_panels(splitter: str = SPLITTER_VAR, window: str = RATE_WINDOW_VAR) -> list[Panel]:
    """The traffic-splitting dashboard, in display order: the observed split of one TrafficSplitter, requests/s
    per API, what became of its shadow's copies and the weighted APIs' 5xx ratio beside the shadow's.

    `myelin_split_requests_total{splitter,api}` is counted by the API that answered a request on the splitter's
    path (in the cloud: the ALB picked it) or by the router (`myelin local`); the shadow's series by the weighted
    APIs' runtimes (cloud) or the router (local), `api` being the shadow. Summed over pods and processes.
    """
    s = _sel(**{c.LABEL_SPLITTER: splitter})
    split = f"rate({c.SPLIT_REQUESTS_TOTAL}{s}[{window}])"
    copies = f"rate({c.SHADOW_REQUESTS_TOTAL}{{selector}}[{window}])"
    failed = _sel(**{c.LABEL_SPLITTER: splitter, c.LABEL_STATUS: SHADOW_FAILED})
    # The weighted APIs' own 5xx ratio (every request they answer, on their endpoint or the splitter's path),
    # for the APIs this splitter sends requests to; an API without a 5xx shows 0, not a gap.
    s5xx = _sel(**{c.LABEL_STATUS: "~5.."})
    answered = f"sum by ({API}) (rate({c.REQUESTS_TOTAL}[{window}]))"
    errors = f"sum by ({API}) (rate({c.REQUESTS_TOTAL}{s5xx}[{window}]))"
    weighted = f"sum by ({API}) ({split})"
    return [
        Panel("split_share", "Observed split (share of the splitter's requests per API)",
              f"sum by ({API}) ({split}) / on () group_left () sum({split})", "{{api}}", "percentunit",
              labels=(API,), for_api=SPLITTER),
        Panel("split_requests", "Requests/s per API (through the splitter)", f"sum by ({API}) ({split})", "{{api}}",
              "reqps", labels=(API,), for_api=SPLITTER),
        Panel("shadow_copies_by_status", "Shadow copies/s by status",
              f"sum by ({c.LABEL_STATUS}) ({copies.format(selector=s)})", "{{status}}", "reqps",
              labels=(c.LABEL_STATUS,), for_api=SPLITTER),
        Panel("shadow_drops_by_reason", "Requests not copied to the shadow/s by reason",
              f"sum by ({c.LABEL_REASON}) (rate({c.SHADOW_DROPPED_TOTAL}{s}[{window}]))", "{{reason}}", "reqps",
              labels=(c.LABEL_REASON,), for_api=SPLITTER),
        Panel("shadow_error_ratio", "Shadow: failed share of its copies (5xx, error, timeout)",
              f"(sum({copies.format(selector=failed)}) or vector(0)) / sum({copies.format(selector=s)})",
              "shadow", "percentunit", for_api=SPLITTER),
        Panel("weighted_error_ratio", "Weighted APIs: 5xx ratio",
              f"(({errors} or {answered} * 0) / {answered}) and on ({API}) {weighted}", "{{api}}", "percentunit",
              labels=(API,), for_api=SPLITTER),
    ]


# ----------------------------------------------------------------------------------------------- cluster
POOL_LABEL = ksm_label(labels.POOL_LABEL)  # label_myelin_dev_pool
CAPACITY_LABEL = ksm_label(labels.CAPACITY_LABEL)  # label_myelin_dev_capacity: spot | on_demand
POD_API_LABEL = ksm_label(labels.API_POD_LABEL)  # label_app_kubernetes_io_name: the API


def cluster_panels(window: str = RATE_WINDOW_VAR, namespace: str = "apis") -> list[Panel]:
    """The cluster dashboard, in display order."""
    gpu_by_api = (
        f"avg by ({POD_API_LABEL}) (DCGM_FI_DEV_GPU_UTIL{_sel(**{NS: namespace})} "
        f"* on ({NS}, {c.LABEL_POD}) group_left ({POD_API_LABEL}) kube_pod_labels{_sel(**{NS: namespace})})"
    )
    return [
        Panel("nodes_by_pool", "Nodes by pool and capacity type",
              f"count by ({POOL_LABEL}, {CAPACITY_LABEL}) (kube_node_labels)",
              "{{%s}} {{%s}}" % (POOL_LABEL, CAPACITY_LABEL), source="kube-state-metrics",
              labels=(POOL_LABEL, CAPACITY_LABEL)),
        Panel("pending_pods", "Pending pods by namespace",
              f'sum by ({NS}) (kube_pod_status_phase{{phase="Pending"}})', "{{namespace}}",
              source="kube-state-metrics", labels=(NS,)),
        Panel("gpu_util_by_node", "GPU utilisation by node", "avg by (node) (DCGM_FI_DEV_GPU_UTIL)", "{{node}}",
              "percent", source="dcgm", labels=("node",)),
        Panel("gpu_mem_by_node", "GPU memory used by node",
              "sum by (node) (DCGM_FI_DEV_FB_USED) / sum by (node) (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)",
              "{{node}}", "percentunit", source="dcgm", labels=("node",)),
        Panel("gpu_util_by_api", "GPU utilisation by API", gpu_by_api, "{{%s}}" % POD_API_LABEL, "percent",
              source="dcgm", labels=(POD_API_LABEL,)),
        Panel("log_delivery_errors", "Log delivery errors/s (Fluent Bit to CloudWatch)",
              f"sum(rate(fluentbit_output_errors_total[{window}])) + sum(rate(fluentbit_output_retries_failed_total[{window}]))",
              "errors + failed retries", "ops", source="fluent-bit"),
        *_cost().cluster_cost_panels(),  # APIs by cost
    ]


def _cost():
    from . import cost  # cost.py builds on Panel

    return cost
