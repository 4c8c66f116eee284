"""Autoscaling shared by the API kinds: Cortex's knobs mapped onto a KEDA ScaledObject and its HPA `behavior`."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from myelin.spec import ApiSpec

from ..observability import queries

KEDA_POLLING_SECONDS = 15


def autoscaled(spec: ApiSpec) -> bool:
    return spec.autoscaling.min_replicas != spec.autoscaling.max_replicas


def in_flight_query(spec: ApiSpec, namespace: str) -> str:
    return queries.in_flight_autoscaling(spec.name, namespace, int(spec.autoscaling.window.seconds))


def hpa_behavior(spec: ApiSpec) -> dict[str, Any]:
    """Cortex's stabilization windows and max up/down factors as HPA `behavior`."""
    a = spec.autoscaling
    up_percent = max(1, round((a.max_upscale_factor - 1) * 100))
    down_percent = max(1, min(100, round((1 - a.max_downscale_factor) * 100)))
    return {
        "scaleUp": {
            "stabilizationWindowSeconds": int(a.upscale_stabilization.seconds),
            "selectPolicy": "Max",
            "policies": [{"type": "Percent", "value": up_percent, "periodSeconds": KEDA_POLLING_SECONDS}],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": int(a.downscale_stabilization.seconds),
            "selectPolicy": "Max",
            "policies": [{"type": "Percent", "value": down_percent, "periodSeconds": KEDA_POLLING_SECONDS}],
        },
    }


def scaled_object(name: str, spec: ApiSpec, metadata: k8s.meta.v1.ObjectMetaArgs, deployment_name: str,
                  triggers: list[dict[str, Any]], opts: pulumi.ResourceOptions,
                  min_replicas: int | None = None, cooldown_seconds: int | None = None,
                  target: tuple[str, str] = ("apps/v1", "Deployment")) -> k8s.apiextensions.CustomResource:
    a = spec.autoscaling
    extra = {} if cooldown_seconds is None else {"cooldownPeriod": cooldown_seconds}
    return k8s.apiextensions.CustomResource(
        f"{name}-scaledobject",
        api_version="keda.sh/v1alpha1",
        kind="ScaledObject",
        metadata=metadata,
        spec={
            # The Deployment, or a canary's Argo Rollout (its scale subresource): `target` is (apiVersion, kind).
            "scaleTargetRef": {"apiVersion": target[0], "kind": target[1], "name": deployment_name},
            "pollingInterval": KEDA_POLLING_SECONDS,
            "minReplicaCount": a.min_replicas if min_replicas is None else min_replicas,
            "maxReplicaCount": a.max_replicas,
            # With minReplicaCount 0: how long every trigger must be inactive before KEDA scales to zero.
            **extra,
            "advanced": {
                "restoreToOriginalReplicaCount": False,
                "horizontalPodAutoscalerConfig": {"name": deployment_name, "behavior": hpa_behavior(spec)},
            },
            "triggers": triggers,
        },
        opts=opts,
    )


def in_flight_trigger(spec: ApiSpec, namespace: str, prometheus_url: str) -> dict[str, Any]:
    return {
        "type": "prometheus",
        "name": "in-flight",
        "metricType": "AverageValue",
        "metadata": {
            "serverAddress": prometheus_url,
            "query": in_flight_query(spec, namespace),
            "threshold": number(spec.target_in_flight),
            # Missing series (a fresh deployment) counts as zero load, not an error.
            "ignoreNullValues": "true",
        },
    }


def number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def plain(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise TypeError("the API namespace must be a plain string (it goes into the autoscaling query)")
