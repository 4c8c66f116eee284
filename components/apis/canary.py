"""`rollout.strategy: canary` of a RealtimeAPI: the API's pods run under an Argo Rollout whose new version takes a
growing share of the requests on the ALB, with an analysis on the API's own metrics that aborts it.

Checked against argoproj/argo-rollouts v1.9.0 (the app version of chart argo-rollouts 2.41.0):
docs/features/traffic-management/alb.md and pkg/apis/rollouts/validation/validation.go (ALB with ping-pong needs
`rootService`), docs/features/analysis.md, metricproviders/prometheus/prometheus.go and utils/evaluate/evaluate.go
(a vector result is `result`, a list; a measurement neither condition matches is Inconclusive); and the chart's
CRDs (tests/infra/schemas). The ALB action annotation's format: kubernetes-sigs/aws-load-balancer-controller
v2.14.0 docs/guide/ingress/annotations.md (`actions.${action-name}`, forward to several target groups by
serviceName/servicePort/weight, the rule's backend port `use-annotation`).

Objects (beside the ServiceAccount, PDB and NetworkPolicy every API has):

- two Services, `<api>-ping` and `<api>-pong`, selecting the API's pods: Argo's ping-pong (its ALB docs'
  recommendation), so the load balancer controller's readiness gates are injected into every pod (they are only
  injected when a pod is created behind a Service an Ingress reaches, and ping-pong never retargets a Service to
  pods that already exist without them);
- the Ingress: the API's path to the action `<api>` (port `use-annotation`), first created forwarding all
  requests to ping; from then on Argo owns the action annotation (the weights) and its bookkeeping annotation;
- the Rollout `<api>`: the pod template, the steps, the background analysis, and a last analysis step (the gate)
  that must measure a conclusive pass before the new version takes every request;
- two AnalysisTemplates, `<api>-canary-watch` (every `interval` from the first step on; one failed measurement
  aborts) and `<api>-canary-gate` (one measurement), with the same two queries (`analysis_queries`);
- the KEDA ScaledObject targets the Rollout (its scale subresource), as it targeted the Deployment.

Pulumi never writes what the controllers write: the Rollout has no `replicas` when KEDA scales it; the Ingress
ignores changes to the two annotations Argo patches; the ping and pong Services ignore changes to their selector,
to which Argo adds the pod-template hash of the version each one serves.
"""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from myelin import contract as c
from myelin.spec import ApiSpec

from .shared import ALB, PORT, Parts

ROLLOUTS_API_VERSION = "argoproj.io/v1alpha1"
#: Written by Argo on the API's Ingress (alb.md: the action it patches, and the bookkeeping annotation).
MANAGED_ACTIONS_ANNOTATION = "rollouts.argoproj.io/managed-alb-actions"
#: The Ingress backend port that makes the load balancer controller read the action annotation instead.
USE_ANNOTATION = "use-annotation"
SERVICE_PORT = 80
#: The AnalysisTemplates' argument: the pod-template hash of the new version (`podTemplateHashValue: Latest`).
HASH_ARG = "canary-hash"
HASH_PLACEHOLDER = "{{args.%s}}" % HASH_ARG
#: What a query answers when the new version had fewer than min_requests requests in the window: neither
#: condition matches it, so the measurement is Inconclusive.
TOO_FEW = -1
#: Background measurements allowed to be inconclusive (little traffic at a small weight) before the run is:
#: only the gate's must be conclusive.
WATCH_INCONCLUSIVE_LIMIT = 1000


def action_annotation(spec: ApiSpec) -> str:
    return f"{ALB}actions.{spec.name}"


def ping_pong(spec: ApiSpec) -> tuple[str, str]:
    return f"{spec.name}-ping", f"{spec.name}-pong"


def _window(spec: ApiSpec) -> str:
    return f"{int(spec.rollout.analysis.interval.seconds)}s"


def _number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def analysis_queries(spec: ApiSpec, namespace: str, pod_hash: str = HASH_PLACEHOLDER) -> dict[str, str]:
    """The analysis's PromQL, on the new version's pods only (`pod` names `<api>-<hash>-<suffix>`, the scrape
    job's `pod` label), over one interval: its 5xx ratio and its p99, each `TOO_FEW` (-1) when it answered fewer
    than min_requests requests in that interval."""
    a = spec.rollout.analysis
    window = _window(spec)
    pods = (f'{c.LABEL_NAMESPACE}="{namespace}",{c.LABEL_API}="{spec.name}",'
            f'{c.LABEL_POD}=~"{spec.name}-{pod_hash}-[a-z0-9]+"')
    requests = f"sum(increase({c.REQUESTS_TOTAL}{{{pods}}}[{window}]))"
    enough = f"({requests} >= {a.min_requests})"
    errors = f'sum(increase({c.REQUESTS_TOTAL}{{{pods},{c.LABEL_STATUS}=~"5.."}}[{window}]))'
    p99 = f"histogram_quantile(0.99, sum by (le) (rate({c.REQUEST_DURATION}_bucket{{{pods}}}[{window}])))"
    return {
        "error-ratio": f"(({errors} or vector(0)) / {enough}) or vector({TOO_FEW})",
        "p99-seconds": f"({p99} and on() {enough}) or vector({TOO_FEW})",
    }


def analysis_conditions(spec: ApiSpec) -> dict[str, tuple[str, str]]:
    """(successCondition, failureCondition) per metric, in Argo's expression language: a pass within the
    threshold, a failure above it, and neither (Inconclusive) for TOO_FEW or NaN."""
    a = spec.rollout.analysis
    out = {}
    for name, limit in (("error-ratio", a.max_error_ratio), ("p99-seconds", a.max_p99_seconds)):
        bound = _number(limit)
        out[name] = (f"result[0] >= 0 && result[0] <= {bound}", f"result[0] > {bound}")
    return out


def analysis_template_spec(spec: ApiSpec, namespace: str, prometheus_url: str, gate: bool) -> dict[str, Any]:
    queries = analysis_queries(spec, namespace)
    metrics = []
    for name, (success, failure) in analysis_conditions(spec).items():
        metric: dict[str, Any] = {
            "name": name,
            "successCondition": success,
            "failureCondition": failure,
            "failureLimit": 0,
            "provider": {"prometheus": {"address": prometheus_url, "query": queries[name]}},
        }
        if not gate:  # measured every interval until the rollout ends; the gate measures once
            metric["interval"] = _window(spec)
            metric["inconclusiveLimit"] = WATCH_INCONCLUSIVE_LIMIT
        else:
            metric["inconclusiveLimit"] = 0
        metrics.append(metric)
    return {"args": [{"name": HASH_ARG}], "metrics": metrics}


def _hash_arg() -> list[dict[str, Any]]:
    return [{"name": HASH_ARG, "valueFrom": {"podTemplateHashValue": "Latest"}}]


def rollout_steps(spec: ApiSpec, gate_template: str) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    for step in spec.rollout.steps:
        steps.append({"setWeight": step.weight})
        steps.append({"pause": {"duration": f"{int(step.pause.seconds)}s"}} if step.pause is not None
                     else {"pause": {}})
    steps.append({"analysis": {"templates": [{"templateName": gate_template}], "args": _hash_arg()}})
    return steps


class Canary:
    """The canary objects of one RealtimeAPI, as children of its component (see the module's docstring)."""

    def __init__(self, parts: Parts, template: k8s.core.v1.PodTemplateSpecArgs, replicas: int | None,
                 prometheus_url: str, namespace: str, *depends_on: pulumi.Resource):
        spec = parts.spec
        self.parts = parts
        ping, pong = ping_pong(spec)
        # Argo adds the pod-template hash to each selector; Pulumi sets it once, at creation.
        self.ping = parts.service(ping, ignore_changes=["spec.selector"])
        self.pong = parts.service(pong, ignore_changes=["spec.selector"])
        self.watch = self._template("-canary-watch", prometheus_url, namespace, gate=False)
        self.gate = self._template("-canary-gate", prometheus_url, namespace, gate=True)
        # The controller reads the stable/canary roles from ping/pong and patches the Ingress: both exist first.
        self.rollout = k8s.apiextensions.CustomResource(
            f"{parts.name}-rollout",
            api_version=ROLLOUTS_API_VERSION,
            kind="Rollout",
            metadata=parts.meta(),
            spec={
                **({"replicas": replicas} if replicas is not None else {}),
                "selector": {"matchLabels": parts.selector},
                "revisionHistoryLimit": 5,
                "progressDeadlineSeconds": parts.args.pods.rollout_seconds(spec.compute.gpu > 0),
                "template": template,
                "strategy": {"canary": {
                    "pingPong": {"pingService": ping, "pongService": pong},
                    "trafficRouting": {"alb": {"ingress": spec.name, "rootService": spec.name,
                                               "servicePort": SERVICE_PORT}},
                    # Surge only: no version loses a pod while the weights move.
                    "maxSurge": spec.update_strategy.max_surge,
                    "maxUnavailable": 0,
                    "analysis": {"templates": [{"templateName": self.watch_name}], "args": _hash_arg(),
                                 "startingStep": 1},
                    "steps": rollout_steps(spec, self.gate_name),
                }},
            },
            opts=parts.opts(self.ping, self.pong, self.watch, self.gate, *depends_on),
        )

    @property
    def watch_name(self) -> str:
        return f"{self.parts.spec.name}-canary-watch"

    @property
    def gate_name(self) -> str:
        return f"{self.parts.spec.name}-canary-gate"

    def _template(self, suffix: str, prometheus_url: str, namespace: str, gate: bool) -> k8s.apiextensions.CustomResource:
        parts = self.parts
        return k8s.apiextensions.CustomResource(
            f"{parts.name}{suffix}",
            api_version=ROLLOUTS_API_VERSION,
            kind="AnalysisTemplate",
            metadata=parts.meta(suffix),
            spec=analysis_template_spec(parts.spec, namespace, prometheus_url, gate),
            opts=parts.opts(),
        )

    def ingress_backend(self) -> dict[str, Any]:
        """The Ingress's action: every request to ping until Argo takes the annotation over (alb.md: it writes the
        same action, weighted, on each step)."""
        ping, pong = ping_pong(self.parts.spec)
        action = {"type": "forward", "forwardConfig": {"targetGroups": [
            {"serviceName": ping, "servicePort": str(SERVICE_PORT), "weight": 100},
            {"serviceName": pong, "servicePort": str(SERVICE_PORT), "weight": 0},
        ]}}
        return {"annotations": {action_annotation(self.parts.spec): json.dumps(action, separators=(",", ":"))},
                "ignore": [f'metadata.annotations["{action_annotation(self.parts.spec)}"]',
                           f'metadata.annotations["{MANAGED_ACTIONS_ANNOTATION}"]']}


__all__ = ["Canary", "analysis_conditions", "analysis_queries", "analysis_template_spec", "rollout_steps", "PORT"]
