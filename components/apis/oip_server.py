"""`OipServerRoutes`: the Open Inference Protocol's server-wide routes on a stack's shared load balancer.

`GET /v2`, `GET /v2/health/live` and `GET /v2/health/ready` belong to no API: a client asks them of the
server, which in the cloud is the load balancer in front of every API. So the load balancer answers them
itself, with fixed responses (AWS Load Balancer Controller `actions.<name>` annotations of type
`fixed-response`), from one Ingress per IngressGroup (visibility) that serves APIs: the ALB exists in every
stack that serves an API, and it is the one thing every request passes. `live` and the metadata are what
`myelin serve` answers; `ready` says the load balancer routes (it forwards only to pods whose `/readyz`
passes, and answers 503 for an API with none): each model's own readiness is its
`/v2/models/<name>/ready`, answered by the API. The per-model routes go to each API through its own
Ingress (`shared.routed_paths`).
"""

from __future__ import annotations

import json

import pulumi
import pulumi_kubernetes as k8s

from myelin import __version__, contract

from .shared import ALB, PredictorApiArgs, ingress_annotations

#: The fixed answers (bodies as `myelin serve` gives them; a fixed response is at most 1024 bytes).
SERVER_ROUTES = {
    "oip-server-metadata": (contract.OIP_PREFIX, {"name": "myelin", "version": __version__,
                                                  "extensions": ["binary_tensor_data"]}),
    "oip-server-live": (contract.OIP_HEALTH_PREFIX + "/live", {"live": True}),
    "oip-server-ready": (contract.OIP_HEALTH_PREFIX + "/ready", {"ready": True}),
}


def fixed_response(body: dict) -> str:
    return json.dumps({"type": "fixed-response", "fixedResponseConfig": {
        "contentType": "application/json", "statusCode": "200", "messageBody": json.dumps(body)}})


class OipServerRoutes(pulumi.ComponentResource):
    """One Ingress in the IngressGroup of `args.spec`'s visibility (any API of that visibility: the group's
    load-balancer settings are the same for all) answering the server-wide OIP routes at the load balancer."""

    def __init__(self, name: str, args: PredictorApiArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("myelin:apis:OipServerRoutes", name, None, opts)
        spec = args.spec
        visibility = spec.networking.visibility
        annotations = ingress_annotations(spec, args)
        for action, (_, body) in SERVER_ROUTES.items():
            annotations[f"{ALB}actions.{action}"] = fixed_response(body)
        self.ingress = k8s.networking.v1.Ingress(
            f"{name}-ingress",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=f"myelin-oip-server-{visibility}", namespace=args.namespace, annotations=annotations,
                labels={"app.kubernetes.io/part-of": "myelin", "app.kubernetes.io/component": "oip-server-routes"}),
            spec=k8s.networking.v1.IngressSpecArgs(
                ingress_class_name="alb",
                rules=[k8s.networking.v1.IngressRuleArgs(
                    host=args.ingress.domain if visibility == "public" else None,
                    http=k8s.networking.v1.HTTPIngressRuleValueArgs(paths=[
                        k8s.networking.v1.HTTPIngressPathArgs(
                            path=path, path_type="Exact",
                            backend=k8s.networking.v1.IngressBackendArgs(
                                service=k8s.networking.v1.IngressServiceBackendArgs(
                                    name=action, port=k8s.networking.v1.ServiceBackendPortArgs(name="use-annotation"))),
                        )
                        for action, (path, _) in SERVER_ROUTES.items()
                    ]),
                )],
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.after)),
        )
        self.register_outputs({})
