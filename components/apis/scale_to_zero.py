"""Scale to zero in the cluster (autoscaling.min_replicas 0): KEDA's HTTP add-on holds requests while the API wakes.

Path of a request to an API scaled to zero:

    ALB --Ingress (namespace keda)--> interceptor proxy :8080 --(held until a ready endpoint)--> API Service
                                            |                                       (namespace apis)
                                            `-- readiness timeout passed --> cold-start responder: 503 + Retry-After

- `InterceptorRoute` (http.keda.sh/v1beta1, kedacore/http-add-on v0.15.0 operator/apis/http/v1beta1/
  interceptorroute_types.go): the API's path, its Service as target, concurrency as the scaling metric, the
  Myelin cold-start responder as the fallback and the timeouts below. It lives in the API's namespace: the
  scaler looks routes up in the ScaledObject's namespace, and targets are Services of the route's namespace.
- The API's own ScaledObject (one per Deployment: KEDA's webhook refuses a second) gets `minReplicaCount: 0`,
  `cooldownPeriod` = autoscaling.downscale_stabilization, and a second trigger, `external-push` to the add-on's
  scaler, next to the in-flight trigger: active while the route has requests held or in flight, so KEDA wakes
  the Deployment 0 -> 1; the HPA then scales on the larger of the two (the same target per replica).
- The Ingress: the AWS Load Balancer Controller (v2.14.0) resolves IP targets from a backend Service's
  EndpointSlices and has no ExternalName support, so the Ingress of such an API lives in the interceptor's
  namespace, in the same IngressGroup (one ALB), and the ALB health-checks the interceptor's admin /readyz.
- Deadline: the route holds a request at most serving.timeout (`timeouts.readiness`); the runtime then learns the
  request's arrival from the ALB's X-Amzn-Trace-Id (Root=1-<epoch seconds in hex>-...) and keeps the deadline
  from arrival (MYELIN_ARRIVAL_HEADER), and measures the cold start (myelin_cold_starts_total and
  myelin_cold_start_duration_seconds).
"""

from __future__ import annotations

import math
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from myelin.spec import ApiSpec

from .. import versions
from ..config import InterceptorTimings, held_request_seconds
from ..addons.base import KEDA_NAMESPACE
from .shared import ALB, IngressBackend, routed_paths

#: Runtime setting: the request header carrying the load balancer's arrival time (see myelin/settings.py).
ARRIVAL_HEADER_ENV = "MYELIN_ARRIVAL_HEADER"
ALB_TRACE_HEADER = "x-amzn-trace-id"
#: The shared responder answering requests held past their API's readiness timeout (cold_start.py).
RESPONDER_NAME = "myelin-cold-start"
RESPONDER_PORT = 8080


def scales_to_zero(spec: ApiSpec) -> bool:
    return spec.autoscaling.min_replicas == 0


def route_timeouts(spec: ApiSpec) -> dict[str, str]:
    """Hold at most serving.timeout; whatever the hold took, the runtime serves within the rest of it."""
    timeout = math.ceil(spec.serving.timeout.seconds)
    return {
        "readiness": f"{timeout}s",
        "request": f"{held_request_seconds(spec)}s",
        "responseHeader": f"{timeout + 5}s",
    }


def concurrency_target(spec: ApiSpec) -> int:
    return max(1, math.ceil(spec.target_in_flight))


def interceptor_route(name: str, spec: ApiSpec, metadata: k8s.meta.v1.ObjectMetaArgs, service_name: pulumi.Input[str],
                      opts: pulumi.ResourceOptions) -> k8s.apiextensions.CustomResource:
    # No `hosts`: the add-on matches them byte for byte (kedacore/http-add-on v0.15.0 pkg/routing/tablememory.go,
    # Route: the request's Host as is, no case folding), while the ALB's host condition ignores case, so a Host
    # differing only in case would pass the ALB and get the interceptor's 404. The route's path, behind the
    # Ingress's Exact path on the ALB (and its host rule for a public API with a domain), already scopes it: a
    # route without hosts is the catch-all for its path.
    rule: dict[str, Any] = {"paths": [{"value": path} for path, _ in routed_paths(spec)]}
    return k8s.apiextensions.CustomResource(
        f"{name}-interceptorroute",
        api_version="http.keda.sh/v1beta1",
        kind="InterceptorRoute",
        metadata=metadata,
        spec={
            "target": {"service": service_name, "portName": "http"},
            "rules": [rule],
            "scalingMetric": {"concurrency": {"targetValue": concurrency_target(spec)}},
            "coldStart": {"fallback": {"service": {"name": RESPONDER_NAME, "port": RESPONDER_PORT}}},
            "timeouts": route_timeouts(spec),
        },
        opts=opts,
    )


def push_trigger(route_name: str) -> dict[str, Any]:
    """The add-on's trigger in the API's ScaledObject (docs content/http-add-on/0.15/user-guide/autoscale-an-app.md:
    metadata key `interceptorRoute`, kedacore/http-add-on v0.15.0 pkg/k8s/scaledobject.go)."""
    return {
        "type": "external-push",
        "name": "held-requests",
        "metadata": {
            "scalerAddress": f"{versions.KEDA_HTTP_SCALER_SERVICE}.{KEDA_NAMESPACE}:{versions.KEDA_HTTP_SCALER_PORT}",
            "interceptorRoute": route_name,
        },
    }


def interceptor_backend(timings: InterceptorTimings) -> IngressBackend:
    return IngressBackend(
        namespace=KEDA_NAMESPACE,
        service=versions.KEDA_HTTP_PROXY_SERVICE,
        port=versions.KEDA_HTTP_PROXY_PORT,
        annotations={
            # The proxy port has no health route (a health check there is routed like traffic); the admin port does.
            ALB + "healthcheck-port": str(versions.KEDA_HTTP_ADMIN_PORT),
            ALB + "healthcheck-path": "/readyz",
            # A stopping interceptor answers what it holds for up to its grace period: the ALB waits as long
            # before it closes the connections of a deregistered interceptor (not the API pod's shorter drain).
            ALB + "target-group-attributes": f"deregistration_delay.timeout_seconds={timings.deregistration_delay_s}",
        },
        suffix="-via-interceptor",
    )


def interceptor_peer() -> k8s.networking.v1.NetworkPolicyPeerArgs:
    return k8s.networking.v1.NetworkPolicyPeerArgs(
        namespace_selector=k8s.meta.v1.LabelSelectorArgs(match_labels={"kubernetes.io/metadata.name": KEDA_NAMESPACE}),
        pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=versions.KEDA_HTTP_INTERCEPTOR_LABELS),
    )
