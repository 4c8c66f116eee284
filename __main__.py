"""Myelin: EKS + add-ons + one PredictorApi per selected API folder. Config: Pulumi.<stack>.yaml."""

import pulumi
import pulumi_random as random

from components import (
    Addons,
    ApiNamespace,
    AsyncCloudArgs,
    AsyncPredictorApi,
    Cluster,
    ColdStartResponder,
    OipServerRoutes,
    Network,
    PredictorApi,
    PredictorApiArgs,
    TrafficSplitterRoute,
    load_settings,
    read_pulumi_config,
)
from components.addons import MONITORING_NAMESPACE, PROMETHEUS_POD_LABELS, PROMETHEUS_URL
from components.apis.model import partition_of, resolve_models
from components.config import interceptor_timings

API_NAMESPACE = "apis"

# Everything is validated here, before the first resource is registered.
raw, stack, region = read_pulumi_config()
settings = load_settings(raw, stack, region)
# The version of every s3:// model, listed now with the deployer's credentials: recorded in the pod templates,
# so a new model at the same URI shows in `pulumi preview` and rolls on `pulumi up` (components/apis/model.py).
models = resolve_models(settings.apis, stack, preview=pulumi.runtime.is_dry_run())
cfg = settings.config
cluster_name = f"myelin-{stack}"

async_apis = [d.spec for d in settings.apis if d.spec.kind == "AsyncAPI"]
# Without NAT (nat: none) an AsyncAPI's pods and KEDA reach SQS through an interface endpoint.
network = Network(cluster_name, cfg.network, cluster_name, region, extra_endpoints=("sqs",) if async_apis else ())
cluster = Cluster(cluster_name, cfg.cluster, network, stack)
existing = cfg.cluster.existing
vpc_id = existing.vpc_id if existing else network.vpc_id
vpc_cidr = existing.vpc_cidr if existing else network.vpc_cidr
# RealtimeAPIs at zero wake on a held request; an AsyncAPI's workers wake on its queue (KEDA's SQS scaler).
to_zero = [d.spec for d in settings.apis if d.spec.kind == "RealtimeAPI" and d.spec.autoscaling.min_replicas == 0]
# How the interceptors that hold their requests stop without cutting one (drain, grace, deregistration delay).
interceptor = interceptor_timings(to_zero, cfg.pods) if to_zero else None
# An API released as a canary: Argo Rollouts (its CRDs and controller) before any Rollout or AnalysisTemplate.
canary = any(d.spec.kind == "RealtimeAPI" and d.spec.rollout.canary for d in settings.apis)
addons = Addons(cluster_name, cfg, cluster, vpc_id, [d.spec.name for d in settings.apis], interceptor=interceptor,
                aws_scalers=bool(async_apis), canary=canary)
k8s_opts = pulumi.ResourceOptions(provider=cluster.provider)
namespace = ApiNamespace(f"{cluster_name}-apis", API_NAMESPACE, opts=k8s_opts)
route_after = []
if to_zero:
    # Answers requests held past their deadline while an API scales from zero (503 + Retry-After).
    responder = ColdStartResponder(
        f"{cluster_name}-cold-start", to_zero, namespace.name, stack, cfg.pods, PROMETHEUS_URL, MONITORING_NAMESPACE,
        PROMETHEUS_POD_LABELS, node_pools=existing is None, force_delete_images=stack != "prod",
        after=[addons, namespace], opts=k8s_opts,
    )
    # Every InterceptorRoute names its Service as the fallback: the Service exists first (and goes last).
    route_after = [responder.service]

endpoints = {}
job_stores = {}
generated_keys = {}
#: One API's args per visibility: the load balancer of that IngressGroup answers the server-wide OIP routes.
group_args = {}
#: API name -> (its args, its component): what a TrafficSplitter weighs.
deployed_apis = {}
for deployed in settings.apis:
    spec = deployed.spec
    keys = None
    if spec.networking.auth:
        if spec.name in settings.api_keys:
            keys = pulumi.Output.secret(settings.api_keys[spec.name])
        else:
            # No keys configured: generate one; read it with `pulumi stack output api_keys --show-secrets`.
            keys = random.RandomPassword(f"{spec.name}-api-key", length=40, special=False).result
            generated_keys[spec.name] = keys
    api_args = PredictorApiArgs(
        spec=spec,
        folder=deployed.folder,
        stack=stack,
        namespace=namespace.name,
        prometheus_url=PROMETHEUS_URL,
        prometheus_namespace=MONITORING_NAMESPACE,
        prometheus_pod_labels=PROMETHEUS_POD_LABELS,
        ingress=cfg.ingress,
        pods=cfg.pods,
        load_balancer_cidrs={"public": network.public_cidrs, "internal": network.internal_lb_cidrs},
        load_balancer_subnets={"public": network.public_subnet_ids, "internal": network.internal_lb_subnet_ids},
        internal_source_cidrs=[vpc_cidr],
        api_keys=keys,
        node_pools=existing is None,
        force_delete_images=stack != "prod",
        # Created after, deleted before, the controllers that act on them (and their IAM permissions).
        after=[addons, namespace],
        model=models.get(spec.name),
        oidc_provider_arn=cluster.oidc_provider_arn,
        oidc_provider_url=cluster.oidc_provider_url,
        partition=partition_of(region),
        interceptor=interceptor,
        route_after=route_after,
        endpoint_aliases=settings.aliases_of(spec.name),
        shadow_targets=settings.shadows_of(spec.name),
        shadow_sources=settings.shadow_sources_of(spec.name),
    )
    if spec.kind == "AsyncAPI":
        cloud = AsyncCloudArgs(region=region, oidc_provider_arn=cluster.oidc_provider_arn,
                               oidc_provider_url=cluster.oidc_provider_url, keda_role=addons.keda_role)
        api = AsyncPredictorApi(spec.name, api_args, cloud, opts=k8s_opts)
        job_stores[spec.name] = {"queue_url": api.queue_url, "dead_letter_queue_url": api.dead_letter_queue_url,
                                 "storage_uri": api.storage_uri}
    else:
        api = PredictorApi(spec.name, api_args, opts=k8s_opts)
    endpoints[spec.name] = api.url
    group_args.setdefault(spec.networking.visibility, api_args)
    deployed_apis[spec.name] = (api_args, api)

# Each TrafficSplitter: its path on the ALB, weighted over its APIs' Services (components/apis/splitter.py).
for splitter in settings.splitters:
    targets = [deployed_apis[t.name] for t in splitter.spec.weighted]
    route = TrafficSplitterRoute(
        f"{cluster_name}-split-{splitter.spec.name}", splitter.spec, [a for a, _ in targets],
        [r for _, api in targets for r in (api.service, api.deployment)], opts=k8s_opts)
    endpoints[splitter.spec.name] = route.url

# `/v2`, `/v2/health/live`, `/v2/health/ready` (the Open Inference Protocol's server routes) on every load balancer.
for visibility, group in sorted(group_args.items()):
    OipServerRoutes(f"{cluster_name}-oip-{visibility}", group, opts=k8s_opts)

pulumi.export("endpoints", endpoints)
if job_stores:
    # Each AsyncAPI's queue, dead-letter queue and bucket (README, AsyncAPI in the cloud).
    pulumi.export("job_stores", job_stores)
pulumi.export("cluster_name", cluster.cluster_name)
pulumi.export("kubeconfig", pulumi.Output.secret(cluster.kubeconfig))
if generated_keys:
    pulumi.export("api_keys", pulumi.Output.secret(generated_keys))
if addons.grafana_admin_password is not None:
    # `kubectl -n monitoring port-forward svc/grafana 3000:80`, user admin, this password.
    pulumi.export("grafana_admin_password", addons.grafana_admin_password)
