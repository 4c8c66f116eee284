"""`kind: TrafficSplitter` in the cloud: the splitter's path on the stack's shared ALB, forwarded by weight to its
APIs' Services (the AWS Load Balancer Controller's weighted forward action), each API's pods answering that path
as their own endpoint.

The ALB forwards a request unchanged: the path a client called (the splitter's endpoint) is the path the API's pod
sees, and the controller has no per-target-group rewrite. So every API a splitter weighs gets
`MYELIN_ENDPOINT_ALIASES=<splitter>=<endpoint>,...` on its pods (realtime.py), and its runtime answers a POST on
that path exactly as on its own endpoint (limits, keys, deadline, log line, `myelin_requests_total{api}`), and
counts it in `myelin_split_requests_total{splitter,api}`: the split, as the local router counts it.

The action annotation's format was checked against kubernetes-sigs/aws-load-balancer-controller v2.14.0
docs/guide/ingress/annotations.md (`actions.${action-name}`: `forward` with `forwardConfig.targetGroups`, each a
`serviceName`, `servicePort` and `weight`; the rule's backend names the action, port `use-annotation`). The
Services are in the Ingress's namespace (the stack's API namespace, where every API lives).

A splitter's shadow: an ALB forwards each request to one target group and cannot copy it, so the weighted APIs'
own runtimes do (myelin/shadow.py). Each gets `MYELIN_SHADOW_TARGETS=<splitter>=<url>;api=..;timeout=..;max_body=..`
(`shadow_targets_env`): the URL of the shadow's Service in the cluster
(`http://<shadow>.<namespace>.svc.cluster.local.`, port 80) and endpoint, with the shadow's serving.timeout and serving.max_body_size, and copies each request it
answers on the splitter's path there after its own answer is written. The NetworkPolicies let exactly these pods
talk: the weighted APIs' egress to the shadow's pods, the shadow's ingress from theirs, on the container port
(`shadow_egress`, `shadow_peers`). The shadow keeps its own Service and Ingress; it is never scaled to zero (the
spec refuses it: its copies would wake it and hold its interceptor for answers nobody reads).
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import pulumi
import pulumi_kubernetes as k8s

from myelin.settings import ShadowTarget, shadow_targets_value
from myelin.spec.splitter import TrafficSplitterSpec

from .autoscaling import plain
from .canary import SERVICE_PORT, USE_ANNOTATION
from .shared import ALB, PORT, PredictorApiArgs, grace_period, ingress_annotations, labels_for

COMPONENT = "traffic-splitter"


def forward_action(splitter: TrafficSplitterSpec) -> dict[str, Any]:
    """The weighted forward action: one target group per weighted API, its Service `<api>` on port 80."""
    return {"type": "forward", "forwardConfig": {"targetGroups": [
        {"serviceName": t.name, "servicePort": str(SERVICE_PORT), "weight": t.weight} for t in splitter.weighted
    ]}}


def action_annotation(splitter: TrafficSplitterSpec) -> str:
    return f"{ALB}actions.{splitter.name}"


def shadow_targets_env(args: PredictorApiArgs) -> str:
    """MYELIN_SHADOW_TARGETS for a weighted API's pods: each shadow's Service (port 80) and endpoint, its limits."""
    namespace = plain(args.namespace)
    return shadow_targets_value(tuple(
        ShadowTarget(splitter=splitter, shadow=shadow.name,
                     # Fully qualified (the final dot): the pod's resolver (ndots 5) would first try each
                     # search domain for a name with fewer dots, several lookups per new connection.
                     url=f"http://{shadow.name}.{namespace}.svc.cluster.local.{shadow.endpoint}",
                     timeout=shadow.serving.timeout.seconds, max_body=shadow.serving.max_body_bytes)
        for splitter, shadow in args.shadow_targets))


def _pods(spec: Any) -> k8s.networking.v1.NetworkPolicyPeerArgs:
    """An API's pods, in the namespace of the policy (every API lives in the stack's API namespace)."""
    return k8s.networking.v1.NetworkPolicyPeerArgs(pod_selector=k8s.meta.v1.LabelSelectorArgs(
        match_labels=labels_for(spec)))


def shadow_egress(args: PredictorApiArgs) -> list[k8s.networking.v1.NetworkPolicyEgressRuleArgs]:
    """A weighted API's pods may open connections to its shadows' pods (a Service's traffic reaches the pod's
    port: NetworkPolicies match after the Service's translation)."""
    if not args.shadow_targets:
        return []
    return [k8s.networking.v1.NetworkPolicyEgressRuleArgs(
        to=[_pods(shadow) for _, shadow in args.shadow_targets],
        ports=[k8s.networking.v1.NetworkPolicyPortArgs(port=PORT, protocol="TCP")])]


def shadow_peers(args: PredictorApiArgs) -> list[k8s.networking.v1.NetworkPolicyPeerArgs]:
    """A shadow's pods admit the pods of the APIs that copy to it."""
    return [_pods(source) for source in args.shadow_sources]


class TrafficSplitterRoute(pulumi.ComponentResource):
    """One Ingress in the IngressGroup of the splitter's visibility: its endpoint (Exact) to the weighted action.

    `targets` are the args of the APIs it weighs (same visibility, checked by config.py); the load-balancer
    settings come from the first (identical across the group), and the target groups' deregistration delay is
    the longest of the APIs' drains, so no API's in-flight request is cut when a pod leaves."""

    url: pulumi.Output[str]

    def __init__(self, name: str, splitter: TrafficSplitterSpec, targets: Sequence[PredictorApiArgs],
                 depends_on: Sequence[pulumi.Resource], opts: pulumi.ResourceOptions | None = None):
        super().__init__("myelin:apis:TrafficSplitterRoute", name, None, opts)
        if not targets:
            raise ValueError(f"{splitter.name}: a TrafficSplitter needs the args of the APIs it weighs")
        first = targets[0]
        annotations = ingress_annotations(first.spec, first)
        drain = max(grace_period(t.spec, t.pods) for t in targets)
        annotations[ALB + "target-group-attributes"] = f"deregistration_delay.timeout_seconds={drain}"
        annotations[action_annotation(splitter)] = json.dumps(forward_action(splitter), separators=(",", ":"))
        visibility = splitter.networking.visibility
        host = first.ingress.domain if visibility == "public" else None
        self.ingress = k8s.networking.v1.Ingress(
            f"{name}-ingress",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=splitter.name, namespace=first.namespace, annotations=annotations,
                labels={"app.kubernetes.io/name": splitter.name, "app.kubernetes.io/instance": splitter.name,
                        "app.kubernetes.io/part-of": "myelin", "app.kubernetes.io/component": COMPONENT}),
            spec=k8s.networking.v1.IngressSpecArgs(
                ingress_class_name="alb",
                rules=[k8s.networking.v1.IngressRuleArgs(
                    host=host,
                    http=k8s.networking.v1.HTTPIngressRuleValueArgs(paths=[
                        k8s.networking.v1.HTTPIngressPathArgs(
                            path=splitter.endpoint, path_type="Exact",
                            backend=k8s.networking.v1.IngressBackendArgs(
                                service=k8s.networking.v1.IngressServiceBackendArgs(
                                    name=splitter.name,
                                    port=k8s.networking.v1.ServiceBackendPortArgs(name=USE_ANNOTATION))),
                        ),
                    ]),
                )],
            ),
            # After the APIs' Services and pods: the controller resolves each target group's Service, and the
            # pods answer the splitter's path (MYELIN_ENDPOINT_ALIASES) before the load balancer sends it.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*first.after, *depends_on]),
        )
        scheme = "https" if first.ingress.certificate_arn is not None else "http"
        if host:
            self.url = pulumi.Output.from_input(f"https://{host}{splitter.endpoint}")
        else:
            from .shared import _hostname

            self.url = self.ingress.status.apply(lambda s: f"{scheme}://{_hostname(s)}{splitter.endpoint}")
        self.register_outputs({"url": self.url})
