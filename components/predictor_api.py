"""`PredictorApi`: one API folder served in the cluster.

ECR image -> ServiceAccount, (Secret) -> Deployment -> Service -> KEDA ScaledObject -> PDB ->
NetworkPolicy -> Ingress on the stack's shared ALB (IngressGroup per visibility).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from myelin import contract
from myelin.contract import SPEC_ENV
from myelin.spec import ApiSpec

from .cluster import CPU_NODE_SELECTOR, GPU_NODE_SELECTOR, GPU_TAINT_KEY
from .config import IngressConfig, PodConfig
from .image import PredictorImage
from .observability import queries
from .versions import CPU_BASE_IMAGE, GPU_BASE_IMAGE

PORT = contract.CONTAINER_PORT
RUN_AS_USER = 10001
KEDA_POLLING_SECONDS = 15
ALB = "alb.ingress.kubernetes.io/"


@dataclass(frozen=True)
class PredictorApiArgs:
    spec: ApiSpec
    folder: Path
    stack: str
    namespace: pulumi.Input[str]
    prometheus_url: str
    prometheus_namespace: str
    prometheus_pod_labels: dict[str, str]
    ingress: IngressConfig
    pods: PodConfig
    load_balancer_cidrs: dict[str, list[str]]  # visibility -> CIDRs the ALB's nodes live in
    internal_source_cidrs: list[str]  # who may call internal APIs (the VPC)
    api_keys: pulumi.Input[str] | None = None  # comma-separated, secret
    node_pools: bool = True  # False on an existing cluster: no pool labels to select
    force_delete_images: bool = False


def labels_for(spec: ApiSpec) -> dict[str, str]:
    # No label named `api`: Prometheus copies pod labels onto samples and would clash with the metric's label.
    return {"app.kubernetes.io/name": spec.name, "app.kubernetes.io/instance": spec.name}


def autoscaled(spec: ApiSpec) -> bool:
    return spec.autoscaling.min_replicas != spec.autoscaling.max_replicas


def grace_period(spec: ApiSpec, pods: PodConfig) -> int:
    """preStop pause + the runtime's drain timeout + a margin for process exit."""
    return pods.pre_stop_seconds + math.ceil(spec.serving.drain_timeout.seconds) + 5


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


class PredictorApi(pulumi.ComponentResource):
    url: pulumi.Output[str]

    def __init__(self, name: str, args: PredictorApiArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("myelin:apis:PredictorApi", name, None, opts)
        spec = args.spec
        gpu = spec.compute.gpu > 0
        child = pulumi.ResourceOptions(parent=self)
        ns = args.namespace
        labels = labels_for(spec)
        all_labels = {**labels, "app.kubernetes.io/part-of": "myelin", "app.kubernetes.io/component": "predictor"}

        def meta(suffix: str = "", **extra: Any) -> k8s.meta.v1.ObjectMetaArgs:
            return k8s.meta.v1.ObjectMetaArgs(name=f"{spec.name}{suffix}", namespace=ns, labels=all_labels, **extra)

        image = PredictorImage(
            f"{args.stack}-{spec.name}",
            args.folder,
            GPU_BASE_IMAGE if gpu else CPU_BASE_IMAGE,
            force_delete=args.force_delete_images,
            opts=child,
        )

        sa = k8s.core.v1.ServiceAccount(
            f"{name}-sa", metadata=meta(), automount_service_account_token=False, opts=child
        )

        env: list[k8s.core.v1.EnvVarArgs] = [
            k8s.core.v1.EnvVarArgs(name=SPEC_ENV, value=spec.model_dump_json()),
            k8s.core.v1.EnvVarArgs(name="PORT", value=str(PORT)),
            # Libraries that cache (Hugging Face, torch) write under HOME: keep it on the writable /tmp.
            k8s.core.v1.EnvVarArgs(name="HOME", value="/tmp"),
            k8s.core.v1.EnvVarArgs(name="PYTHONUNBUFFERED", value="1"),
            # Keep idle connections open longer than the ALB does, or it reuses one the server just
            # closed and answers 502 (the ALB's idle timeout is set on the Ingress below).
            k8s.core.v1.EnvVarArgs(name="MYELIN_KEEP_ALIVE_TIMEOUT", value=str(args.ingress.idle_timeout_seconds + 5)),
        ]
        self.secret = None
        if spec.networking.auth:
            if args.api_keys is None:
                raise ValueError(f"{spec.name}: networking.auth is set but no API keys were provided")
            self.secret = k8s.core.v1.Secret(
                f"{name}-api-keys",
                metadata=meta("-api-keys"),
                type="Opaque",
                string_data={"keys": pulumi.Output.secret(args.api_keys)},
                opts=child,
            )
            env.append(
                k8s.core.v1.EnvVarArgs(
                    name=spec.networking.auth.api_keys_env,
                    value_from=k8s.core.v1.EnvVarSourceArgs(
                        secret_key_ref=k8s.core.v1.SecretKeySelectorArgs(name=f"{spec.name}-api-keys", key="keys")
                    ),
                )
            )

        resources: dict[str, dict[str, str]] = {
            "requests": {"cpu": spec.compute.cpu, "memory": spec.compute.mem},
            "limits": {"memory": spec.compute.mem},
        }
        if gpu:
            resources["requests"]["nvidia.com/gpu"] = str(spec.compute.gpu)
            resources["limits"]["nvidia.com/gpu"] = str(spec.compute.gpu)

        volumes = [k8s.core.v1.VolumeArgs(name="tmp", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(size_limit="4Gi"))]
        mounts = [k8s.core.v1.VolumeMountArgs(name="tmp", mount_path="/tmp")]
        if gpu:
            # CUDA libraries and data loaders use shared memory; the default 64Mi /dev/shm is too small.
            volumes.append(k8s.core.v1.VolumeArgs(
                name="dshm", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(medium="Memory", size_limit="1Gi")))
            mounts.append(k8s.core.v1.VolumeMountArgs(name="dshm", mount_path="/dev/shm"))

        probe_period = 5
        container = k8s.core.v1.ContainerArgs(
            name="predictor",
            image=image.ref,
            ports=[k8s.core.v1.ContainerPortArgs(name="http", container_port=PORT, protocol="TCP")],
            env=env,
            resources=k8s.core.v1.ResourceRequirementsArgs(**resources),
            startup_probe=k8s.core.v1.ProbeArgs(
                http_get=k8s.core.v1.HTTPGetActionArgs(path=contract.HEALTH_PATH, port="http"),
                period_seconds=probe_period,
                timeout_seconds=3,
                failure_threshold=math.ceil(args.pods.startup_timeout_seconds / probe_period),
            ),
            readiness_probe=k8s.core.v1.ProbeArgs(
                http_get=k8s.core.v1.HTTPGetActionArgs(path=contract.READY_PATH, port="http"),
                period_seconds=probe_period,
                timeout_seconds=3,
                failure_threshold=2,
            ),
            liveness_probe=k8s.core.v1.ProbeArgs(
                http_get=k8s.core.v1.HTTPGetActionArgs(path=contract.HEALTH_PATH, port="http"),
                period_seconds=10,
                timeout_seconds=5,
                failure_threshold=3,
            ),
            lifecycle=k8s.core.v1.LifecycleArgs(
                # Keep serving while the load balancer deregisters the pod, then SIGTERM starts the drain.
                pre_stop=k8s.core.v1.LifecycleHandlerArgs(
                    sleep=k8s.core.v1.SleepActionArgs(seconds=args.pods.pre_stop_seconds)
                )
            )
            if args.pods.pre_stop_seconds
            else None,
            security_context=k8s.core.v1.SecurityContextArgs(
                allow_privilege_escalation=False,
                read_only_root_filesystem=True,
                run_as_non_root=True,
                run_as_user=RUN_AS_USER,
                run_as_group=RUN_AS_USER,
                capabilities=k8s.core.v1.CapabilitiesArgs(drop=["ALL"]),
                seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"),
            ),
            volume_mounts=mounts,
        )

        node_selector = None
        tolerations = None
        if gpu:
            tolerations = [k8s.core.v1.TolerationArgs(key=GPU_TAINT_KEY, operator="Exists", effect="NoSchedule")]
            node_selector = GPU_NODE_SELECTOR if args.node_pools else None
        elif args.node_pools:
            node_selector = CPU_NODE_SELECTOR

        pod_spec = k8s.core.v1.PodSpecArgs(
            service_account_name=sa.metadata.name,
            automount_service_account_token=False,
            enable_service_links=False,
            termination_grace_period_seconds=grace_period(spec, args.pods),
            security_context=k8s.core.v1.PodSecurityContextArgs(
                run_as_non_root=True,
                run_as_user=RUN_AS_USER,
                run_as_group=RUN_AS_USER,
                fs_group=RUN_AS_USER,
                seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"),
            ),
            node_selector=node_selector,
            tolerations=tolerations,
            topology_spread_constraints=[
                k8s.core.v1.TopologySpreadConstraintArgs(
                    max_skew=1,
                    topology_key=key,
                    when_unsatisfiable="ScheduleAnyway",
                    label_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=labels),
                )
                for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
            ],
            containers=[container],
            volumes=volumes,
        )

        a = spec.autoscaling
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=meta(),
            spec=k8s.apps.v1.DeploymentSpecArgs(
                # Autoscaled: KEDA's HPA owns the replica count; a `replicas` field would fight it on every update.
                replicas=None if autoscaled(spec) else a.min_replicas,
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=labels),
                revision_history_limit=5,
                progress_deadline_seconds=args.pods.startup_timeout_seconds + 120,
                strategy=k8s.apps.v1.DeploymentStrategyArgs(
                    type="RollingUpdate",
                    rolling_update=k8s.apps.v1.RollingUpdateDeploymentArgs(
                        max_surge=spec.update_strategy.max_surge,
                        max_unavailable=spec.update_strategy.max_unavailable,
                    ),
                ),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(
                        labels=all_labels,
                        annotations={
                            "prometheus.io/scrape": "true",
                            "prometheus.io/port": str(PORT),
                            "prometheus.io/path": contract.METRICS_PATH,
                        },
                    ),
                    spec=pod_spec,
                ),
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[s for s in [self.secret] if s is not None]),
        )

        self.service = k8s.core.v1.Service(
            f"{name}-service",
            metadata=meta(),
            spec=k8s.core.v1.ServiceSpecArgs(
                type="ClusterIP",
                selector=labels,
                ports=[k8s.core.v1.ServicePortArgs(name="http", port=80, target_port="http", protocol="TCP")],
            ),
            opts=child,
        )

        self.scaled_object = None
        if autoscaled(spec):
            self.scaled_object = k8s.apiextensions.CustomResource(
                f"{name}-scaledobject",
                api_version="keda.sh/v1alpha1",
                kind="ScaledObject",
                metadata=meta(),
                spec={
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": spec.name},
                    "pollingInterval": KEDA_POLLING_SECONDS,
                    "minReplicaCount": a.min_replicas,
                    "maxReplicaCount": a.max_replicas,
                    "advanced": {
                        "restoreToOriginalReplicaCount": False,
                        "horizontalPodAutoscalerConfig": {"name": f"{spec.name}", "behavior": hpa_behavior(spec)},
                    },
                    "triggers": [
                        {
                            "type": "prometheus",
                            "name": "in-flight",
                            "metricType": "AverageValue",
                            "metadata": {
                                "serverAddress": args.prometheus_url,
                                "query": in_flight_query(spec, _plain(ns)),
                                "threshold": _number(spec.target_in_flight),
                                # Missing series (a fresh deployment) counts as zero load, not an error.
                                "ignoreNullValues": "true",
                            },
                        }
                    ],
                },
                opts=pulumi.ResourceOptions(parent=self, depends_on=[self.deployment]),
            )

        self.pdb = k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb",
            metadata=meta(),
            spec=k8s.policy.v1.PodDisruptionBudgetSpecArgs(
                # One pod at a time: node drains progress, capacity never drops by more than one replica.
                max_unavailable=1,
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=labels),
                unhealthy_pod_eviction_policy="AlwaysAllow",
            ),
            opts=child,
        )

        lb_cidrs = args.load_balancer_cidrs[spec.networking.visibility]
        self.network_policy = k8s.networking.v1.NetworkPolicy(
            f"{name}-netpol",
            metadata=meta(),
            spec=k8s.networking.v1.NetworkPolicySpecArgs(
                pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=labels),
                policy_types=["Ingress"],
                ingress=[
                    # The ALB (target type ip) reaches pods from its nodes in these subnets.
                    k8s.networking.v1.NetworkPolicyIngressRuleArgs(
                        from_=[k8s.networking.v1.NetworkPolicyPeerArgs(
                            ip_block=k8s.networking.v1.IPBlockArgs(cidr=c)) for c in lb_cidrs],
                        ports=[k8s.networking.v1.NetworkPolicyPortArgs(port=PORT, protocol="TCP")],
                    ),
                    # Prometheus scrapes /metrics.
                    k8s.networking.v1.NetworkPolicyIngressRuleArgs(
                        from_=[
                            k8s.networking.v1.NetworkPolicyPeerArgs(
                                namespace_selector=k8s.meta.v1.LabelSelectorArgs(
                                    match_labels={"kubernetes.io/metadata.name": args.prometheus_namespace}
                                ),
                                pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=args.prometheus_pod_labels),
                            )
                        ],
                        ports=[k8s.networking.v1.NetworkPolicyPortArgs(port=PORT, protocol="TCP")],
                    ),
                ],
            ),
            opts=child,
        )

        self.ingress = k8s.networking.v1.Ingress(
            f"{name}-ingress",
            metadata=meta(annotations=ingress_annotations(spec, args)),
            spec=k8s.networking.v1.IngressSpecArgs(
                ingress_class_name="alb",
                rules=[
                    k8s.networking.v1.IngressRuleArgs(
                        host=args.ingress.domain if spec.networking.visibility == "public" else None,
                        http=k8s.networking.v1.HTTPIngressRuleValueArgs(
                            paths=[
                                # Only the prediction path: /healthz, /readyz and /metrics stay on the pod network.
                                k8s.networking.v1.HTTPIngressPathArgs(
                                    path=spec.endpoint,
                                    path_type="Exact",
                                    backend=k8s.networking.v1.IngressBackendArgs(
                                        service=k8s.networking.v1.IngressServiceBackendArgs(
                                            name=self.service.metadata.name,
                                            port=k8s.networking.v1.ServiceBackendPortArgs(name="http"),
                                        )
                                    ),
                                )
                            ]
                        ),
                    )
                ],
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.deployment]),
        )

        https = args.ingress.certificate_arn is not None
        scheme = "https" if https else "http"
        if args.ingress.domain and spec.networking.visibility == "public":
            self.url = pulumi.Output.from_input(f"https://{args.ingress.domain}{spec.endpoint}")
        else:
            self.url = self.ingress.status.apply(
                lambda s: f"{scheme}://{_hostname(s)}{spec.endpoint}"
            )
        self.register_outputs({"url": self.url})


def ingress_annotations(spec: ApiSpec, args: PredictorApiArgs) -> dict[str, str]:
    visibility = spec.networking.visibility
    ing = args.ingress
    annotations = {
        # One ALB per stack and visibility, shared by every API's Ingress.
        ALB + "group.name": f"myelin-{args.stack}-{visibility}",
        ALB + "scheme": "internet-facing" if visibility == "public" else "internal",
        ALB + "target-type": "ip",
        ALB + "healthcheck-path": contract.READY_PATH,
        ALB + "healthcheck-port": "traffic-port",
        ALB + "healthcheck-interval-seconds": "10",
        ALB + "healthy-threshold-count": "2",
        ALB + "unhealthy-threshold-count": "2",
        ALB + "success-codes": "200",
        # Deregistration must outlast the pod's drain so no in-flight request is cut.
        ALB + "target-group-attributes": f"deregistration_delay.timeout_seconds={grace_period(spec, args.pods)}",
        ALB + "load-balancer-attributes": (
            f"idle_timeout.timeout_seconds={ing.idle_timeout_seconds},"
            "routing.http.drop_invalid_header_fields.enabled=true"
        ),
        ALB + "inbound-cidrs": ",".join(ing.public_source_cidrs if visibility == "public" else args.internal_source_cidrs),
        ALB + "tags": f"myelin:stack={args.stack}",  # LB-level: must be identical across the group
    }
    if ing.certificate_arn:
        annotations.update(
            {
                ALB + "listen-ports": json.dumps([{"HTTP": 80}, {"HTTPS": 443}]),
                ALB + "certificate-arn": ing.certificate_arn,
                ALB + "ssl-redirect": "443",
                ALB + "ssl-policy": ing.ssl_policy,
            }
        )
    else:
        annotations[ALB + "listen-ports"] = json.dumps([{"HTTP": 80}])
    return annotations


def _hostname(status: Any) -> str:
    try:
        lb = status["load_balancer"] if isinstance(status, dict) else status.load_balancer
        ingress = lb["ingress"] if isinstance(lb, dict) else lb.ingress
        first = ingress[0]
        return (first.get("hostname") if isinstance(first, dict) else first.hostname) or "pending"
    except (KeyError, IndexError, TypeError, AttributeError):
        return "pending"


def _plain(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise TypeError("the API namespace must be a plain string (it goes into the autoscaling query)")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
