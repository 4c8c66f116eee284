"""KEDA's HTTP add-on: the interceptor that holds requests for APIs scaled to zero (autoscaling.min_replicas 0).

Installed only when an API scales to zero. Per such API, `components/apis/scale_to_zero.py` creates an
`InterceptorRoute` (http.keda.sh/v1beta1) and adds the add-on's `external-push` trigger to the API's own
ScaledObject; the API's Ingress points at the interceptor's proxy Service. The interceptor counts the request,
KEDA scales the Deployment 0 -> 1 on that count, and the interceptor forwards the held request once the API's
Service has a ready endpoint. APIs with min_replicas >= 1 never pass through it.

Chart keda-add-ons-http 0.15.0 (kedacore/charts c4b92e9, http-add-on/values.yaml):
- the interceptor fleet scales itself (its own ScaledObject, `interceptor.replicas`); two is enough for a
  small platform and survives a node drain (the chart's PDB allows one unavailable);
- `interceptor.responseHeaderTimeout` is the global default of the time from a forwarded request to the API's
  response headers (the route sets its own, from serving.timeout, so this only bounds routes without one);
- `interceptor.podAnnotations` lets the cluster's Prometheus scrape the interceptor's OpenTelemetry exporter on
  port 2223 (`interceptor_request_concurrency`: requests held or in flight, per route).
"""

from __future__ import annotations

from .. import versions
from ..cluster import SYSTEM_NODE_SELECTOR
from .base import KEDA_NAMESPACE, AddonContext

#: The interceptor's Prometheus exporter (kedacore/http-add-on v0.15.0 pkg/observability/config.go,
#: OTEL_PROM_EXPORTER_PORT default 2223; docs content/http-add-on/0.15/reference/metrics.md).
INTERCEPTOR_METRICS_PORT = 2223


class KedaHttpAddOn:
    def __init__(self, ctx: AddonContext, keda_release):
        # On the system nodes beside the other controllers: requests sized for a small platform (the chart's
        # 250m each for the operator and the scalers would take most of a t3.medium).
        interceptor = {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}
        small = {"requests": {"cpu": "25m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}}
        self.release = ctx.release(
            "keda-add-ons-http", versions.KEDA_HTTP_ADD_ON, KEDA_NAMESPACE,
            {
                "interceptor": {
                    "replicas": {"min": 2, "max": 20},
                    "nodeSelector": SYSTEM_NODE_SELECTOR,
                    # Held requests are open connections with their bodies: more memory than the chart's 64Mi.
                    "resources": interceptor,
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
            # The chart's interceptor ScaledObject is a keda.sh object: KEDA's CRDs (and webhook) come first.
            depends_on=[keda_release],
        )
