"""KEDA's HTTP add-on: the interceptor that holds requests for APIs scaled to zero (autoscaling.min_replicas 0).

Installed only when an API scales to zero. Per such API, `components/apis/scale_to_zero.py` creates an
`InterceptorRoute` (http.keda.sh/v1beta1) and adds the add-on's `external-push` trigger to the API's own
ScaledObject; the API's Ingress points at the interceptor's proxy Service. The interceptor counts the request,
KEDA scales the Deployment 0 -> 1 on that count, and the interceptor forwards the held request once the API's
Service has a ready endpoint. APIs with min_replicas >= 1 never pass through it.

Chart keda-add-ons-http 0.15.0 (kedacore/charts c4b92e9, http-add-on/values.yaml and templates/interceptor/):
- the interceptor fleet scales itself (its own ScaledObject, `interceptor.replicas`); two is enough for a
  small platform, and its PodDisruptionBudget (`interceptor.pdb`, set here rather than left to the chart's
  default) lets one go at a time, so a drain or an EKS node update always leaves one serving;
- a stopping interceptor keeps what it holds (`config.InterceptorTimings`): `shutdownDelay` accepting while the
  ALB deregisters it, then `drainTimeout` = the longest held request of the stack's APIs (serving.timeout + the
  route's slack), within `terminationGracePeriodSeconds`; the Ingresses via the interceptor carry the same grace
  period as their target groups' deregistration delay (components/apis/scale_to_zero.py);
- its pods get the load balancer controller's readiness gate (the `keda` namespace carries the inject label,
  and the release comes after the controller's webhook): a new interceptor counts as ready, and a rolling update
  goes on, only once the ALB sees it healthy. The webhook injects the gate into pods created once a target
  group binding names their Service (aws-load-balancer-controller v2.14.0 docs/deploy/pod_readiness_gate.md), so
  on a first deploy the interceptors created before the first Ingress via the interceptor run without it until
  they are replaced (the chart's next rolling update, a scale-out, a drain);
- CPU: a request of 100m and a limit of 1 CPU, set on purpose: the chart's 500m limit would survive the values
  merge (Helm merges maps) and throttle the proxy of every held request under load; no limit at all would let a
  busy interceptor take a whole system node (t3.medium: 2 vCPU) from the controllers beside it;
- `interceptor.responseHeaderTimeout` is the global default of the time from a forwarded request to the API's
  response headers (the route sets its own, from serving.timeout, so this only bounds routes without one);
- `interceptor.podAnnotations` lets the cluster's Prometheus scrape the interceptor's OpenTelemetry exporter on
  port 2223 (`interceptor_request_concurrency`: requests held or in flight, per route).
"""

from __future__ import annotations

from .. import versions
from ..cluster import SYSTEM_NODE_SELECTOR
from ..config import InterceptorTimings
from .base import KEDA_NAMESPACE, AddonContext

#: Interceptors the chart's ScaledObject keeps at least, and how many its PodDisruptionBudget lets go at once:
#: one always serves.
INTERCEPTOR_MIN_REPLICAS = 2
INTERCEPTOR_MAX_UNAVAILABLE = 1
INTERCEPTOR_RESOURCES = {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}}

#: The interceptor's Prometheus exporter (kedacore/http-add-on v0.15.0 pkg/observability/config.go,
#: OTEL_PROM_EXPORTER_PORT default 2223; docs content/http-add-on/0.15/reference/metrics.md).
INTERCEPTOR_METRICS_PORT = 2223


class KedaHttpAddOn:
    def __init__(self, ctx: AddonContext, keda_release, timings: InterceptorTimings, load_balancer_controller):
        # On the system nodes beside the other controllers: requests sized for a small platform (the chart's
        # 250m each for the operator and the scalers would take most of a t3.medium).
        small = {"requests": {"cpu": "25m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}}
        self.release = ctx.release(
            "keda-add-ons-http", versions.KEDA_HTTP_ADD_ON, KEDA_NAMESPACE,
            {
                "interceptor": {
                    "replicas": {"min": INTERCEPTOR_MIN_REPLICAS, "max": 20},
                    "pdb": {"enabled": True, "maxUnavailable": INTERCEPTOR_MAX_UNAVAILABLE},
                    "shutdownDelay": f"{timings.shutdown_delay_s}s",
                    "drainTimeout": f"{timings.drain_s}s",
                    "terminationGracePeriodSeconds": timings.grace_s,
                    "nodeSelector": SYSTEM_NODE_SELECTOR,
                    # Held requests are open connections with their bodies: more memory than the chart's 64Mi.
                    "resources": INTERCEPTOR_RESOURCES,
                    "responseHeaderTimeout": "300s",
                    "podAnnotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(INTERCEPTOR_METRICS_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "operator": {"nodeSelector": SYSTEM_NODE_SELECTOR, "resources": small},
                "scaler": {"nodeSelector": SYSTEM_NODE_SELECTOR, "replicas": 2, "resources": small},
            },
            # The chart's interceptor ScaledObject is a keda.sh object: KEDA's CRDs (and webhook) come first; the
            # load balancer controller's pod webhook too, or the first interceptors would never get the gate.
            depends_on=[keda_release, load_balancer_controller],
        )
