"""`PredictorApi` for `kind: RealtimeAPI`: one API folder served in the cluster.

ECR image -> (IAM role for an s3:// model) -> ServiceAccount, (Secret) -> Deployment -> Service -> KEDA ScaledObject -> PDB -> NetworkPolicy ->
Ingress on the stack's shared ALB (IngressGroup per visibility). Every Kubernetes object comes after the add-ons
and the namespace (`args.after`), so on `pulumi destroy` it goes before them: the load balancer controller
is still there to delete the ALB of the Ingress, KEDA to release its ScaledObject.
"""

from __future__ import annotations

import pulumi

from .autoscaling import autoscaled, in_flight_trigger, plain, scaled_object
from .canary import ROLLOUTS_API_VERSION, Canary
from .scale_to_zero import (
    ALB_TRACE_HEADER,
    ARRIVAL_HEADER_ENV,
    interceptor_backend,
    interceptor_peer,
    interceptor_route,
    push_trigger,
    scales_to_zero,
)
from .shared import Parts, api_image, PredictorApiArgs
from .splitter import shadow_egress, shadow_peers, shadow_targets_env
from myelin.contract import ENDPOINT_ALIASES_ENV, SHADOW_TARGETS_ENV


class PredictorApi(pulumi.ComponentResource):
    url: pulumi.Output[str]

    def __init__(self, name: str, args: PredictorApiArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("myelin:apis:PredictorApi", name, None, opts)
        spec = args.spec
        parts = Parts(self, name, args)

        self.image = api_image(self, args)
        # An s3:// model: the API's own IAM role, reading exactly its model (IRSA; None otherwise).
        self.model_role = parts.model_role()
        sa = parts.service_account(self.model_role)
        self.secret = parts.api_keys_secret()

        a = spec.autoscaling
        to_zero = scales_to_zero(spec)
        # Scaled to zero: the load balancer's trace header tells the runtime when a held request arrived.
        extra_env = {ARRIVAL_HEADER_ENV: ALB_TRACE_HEADER} if to_zero else {}
        if args.endpoint_aliases:
            # Weighed by TrafficSplitters: the ALB forwards their paths unchanged to these pods (splitter.py).
            extra_env[ENDPOINT_ALIASES_ENV] = ",".join(f"{s}={path}" for s, path in args.endpoint_aliases)
        if args.shadow_targets:
            # And copy those requests to the splitters' shadows, which the ALB cannot do (myelin/shadow.py).
            extra_env[SHADOW_TARGETS_ENV] = shadow_targets_env(args)
        # Autoscaled: KEDA's HPA owns the replica count; a `replicas` field would fight it on every update.
        replicas = None if autoscaled(spec) else a.min_replicas
        template = parts.pod_template(self.image.ref, sa, self.secret, extra_env)
        self.canary = None
        if spec.rollout.canary:
            # An Argo Rollout instead of the Deployment (components/apis/canary.py); never scaled to zero (spec).
            self.canary = Canary(parts, template, replicas, args.prometheus_url, plain(args.namespace), self.secret)
            self.deployment = self.canary.rollout
            self.service = self.canary.ping
        else:
            self.deployment = parts.deployment(
                f"{name}-deployment", replicas, template,
                parts.opts(self.secret, custom_timeouts=parts.rollout_timeouts()),
            )
            self.service = parts.service()
        self.scaled_object = None
        self.route = None
        triggers = [in_flight_trigger(spec, plain(args.namespace), args.prometheus_url)]
        if to_zero:
            # After the cold-start responder's Service: a route never names a fallback that does not exist yet.
            self.route = interceptor_route(name, spec, parts.meta(), self.service.metadata.name,
                                           parts.opts(*args.route_after))
            triggers.append(push_trigger(spec.name))
        if autoscaled(spec):
            self.scaled_object = scaled_object(
                name, spec, parts.meta(), spec.name, triggers,
                # The route first: a ScaledObject naming a route the scaler cannot find gets no metric.
                parts.opts(self.deployment, self.route),
                cooldown_seconds=int(a.downscale_stabilization.seconds) if to_zero else None,
                target=(ROLLOUTS_API_VERSION, "Rollout") if self.canary is not None else ("apps/v1", "Deployment"),
            )
        self.pdb = parts.pdb()
        # The interceptor (scaled to zero); the APIs copying requests to this one (a splitter's shadow). Out: to
        # the shadows this API copies to.
        self.network_policy = parts.network_policy(*([interceptor_peer()] if to_zero else []), *shadow_peers(args),
                                                   extra_egress=shadow_egress(args))
        if self.canary is not None:
            # The Rollout first: its controller takes over the Ingress's action annotation once both exist.
            self.ingress = parts.ingress(None, self.deployment, self.canary.pong,
                                         action=self.canary.ingress_backend())
        else:
            self.ingress = parts.ingress(self.service, self.deployment, *([self.route] if to_zero else []),
                                         via=interceptor_backend(self._timings(args)) if to_zero else None)
        self.url = parts.url(self.ingress)
        self.register_outputs({"url": self.url})

    @staticmethod
    def _timings(args: PredictorApiArgs):
        if args.interceptor is None:
            raise ValueError(f"{args.spec.name}: scales to zero, but the stack passed no interceptor timings")
        return args.interceptor
