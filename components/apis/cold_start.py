"""`ColdStartResponder`: the answer for requests held past their deadline while an API scales from zero.

KEDA's interceptor hands a held request to its route's `coldStart.fallback` Service when the API is not ready
within the route's readiness timeout; without a fallback it would answer a plain-text 504 (kedacore/http-add-on
v0.15.0 interceptor/middleware/endpoint_resolver.go). This is that Service: `myelin cold-start` (from the
runtime, in an image with no API folder) answers the contract's 503 JSON with Retry-After, estimated from the
API's measured cold starts in Prometheus (or from the stack's timings before the first one). One per stack,
in the APIs' namespace (a route's fallback must be in the route's namespace), only when an API scales to zero.
"""

from __future__ import annotations

import json
from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s

from myelin.spec import ApiSpec

from ..cluster import CPU_NODE_SELECTOR
from ..config import PodConfig
from ..image import BUILD_DIR, PredictorImage
from ..versions import CPU_BASE_IMAGE, CPU_TORCH_INDEX
from .scale_to_zero import RESPONDER_NAME, RESPONDER_PORT, interceptor_peer
from .shared import RUN_AS_USER, scratch_volumes_annotation

LABELS = {"app.kubernetes.io/name": RESPONDER_NAME, "app.kubernetes.io/part-of": "myelin",
          "app.kubernetes.io/component": "cold-start"}
PROMETHEUS_PORT = 9090  # the Prometheus server container's port (NetworkPolicies match pod ports)


def cold_start_estimate(spec: ApiSpec, pods: PodConfig) -> int:
    """Before any cold start is measured: a new node (GPU APIs: the GPU pool drains to zero), the image, the model."""
    gpu = spec.compute.gpu > 0
    node = pods.gpu_node_wait_seconds if gpu else 0  # CPU pods usually find room on a running node
    pull = pods.gpu_image_pull_seconds if gpu else pods.cpu_image_pull_seconds
    return node + pull + pods.startup_timeout_seconds // 2


def responder_settings(specs: list[ApiSpec], pods: PodConfig) -> str:
    return json.dumps([{"name": s.name, "endpoint": s.endpoint, "timeout_seconds": s.serving.timeout.seconds,
                        "estimate_seconds": cold_start_estimate(s, pods)} for s in specs], sort_keys=True)


class ColdStartResponder(pulumi.ComponentResource):
    def __init__(self, name: str, specs: list[ApiSpec], namespace: pulumi.Input[str], stack: str, pods: PodConfig,
                 prometheus_url: str, prometheus_namespace: str, prometheus_pod_labels: dict[str, str],
                 node_pools: bool, force_delete_images: bool, after: list[pulumi.Resource],
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("myelin:apis:ColdStartResponder", name, None, opts)
        k8s_opts = pulumi.ResourceOptions(parent=self, depends_on=after)
        empty_api = BUILD_DIR / "cold-start-api"  # the runtime alone: no API folder in this image
        empty_api.mkdir(parents=True, exist_ok=True)
        self.image = PredictorImage(f"{stack}-{RESPONDER_NAME}", Path(empty_api), CPU_BASE_IMAGE, CPU_TORCH_INDEX,
                                    force_delete=force_delete_images, opts=pulumi.ResourceOptions(parent=self))
        meta = k8s.meta.v1.ObjectMetaArgs(name=RESPONDER_NAME, namespace=namespace, labels=LABELS)
        security = k8s.core.v1.SecurityContextArgs(
            allow_privilege_escalation=False, read_only_root_filesystem=True, run_as_non_root=True,
            run_as_user=RUN_AS_USER, run_as_group=RUN_AS_USER, capabilities=k8s.core.v1.CapabilitiesArgs(drop=["ALL"]),
            seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"),
        )
        probe = k8s.core.v1.ProbeArgs(http_get=k8s.core.v1.HTTPGetActionArgs(path="/readyz", port="http"),
                                      period_seconds=10, timeout_seconds=3)
        volumes = [k8s.core.v1.VolumeArgs(name="tmp", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(size_limit="64Mi"))]
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=meta,
            spec=k8s.apps.v1.DeploymentSpecArgs(
                replicas=2,  # a node drain never leaves held requests without their answer
                strategy=k8s.apps.v1.DeploymentStrategyArgs(
                    type="RollingUpdate",
                    rolling_update=k8s.apps.v1.RollingUpdateDeploymentArgs(max_surge=1, max_unavailable=0)),
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=LABELS),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    # /tmp is scratch: the cluster autoscaler may move the pod and remove its node.
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=LABELS, annotations=scratch_volumes_annotation(volumes)),
                    spec=k8s.core.v1.PodSpecArgs(
                        automount_service_account_token=False,
                        enable_service_links=False,
                        node_selector=CPU_NODE_SELECTOR if node_pools else None,
                        security_context=k8s.core.v1.PodSecurityContextArgs(
                            run_as_non_root=True, run_as_user=RUN_AS_USER, run_as_group=RUN_AS_USER,
                            seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault")),
                        containers=[k8s.core.v1.ContainerArgs(
                            name="cold-start",
                            image=self.image.ref,
                            command=["myelin", "cold-start", "--host", "0.0.0.0", "--port", str(RESPONDER_PORT)],
                            ports=[k8s.core.v1.ContainerPortArgs(name="http", container_port=RESPONDER_PORT)],
                            env=[
                                k8s.core.v1.EnvVarArgs(name="MYELIN_COLD_START_APIS", value=responder_settings(specs, pods)),
                                k8s.core.v1.EnvVarArgs(name="MYELIN_PROMETHEUS_URL", value=prometheus_url),
                                k8s.core.v1.EnvVarArgs(name="HOME", value="/tmp"),
                            ],
                            resources=k8s.core.v1.ResourceRequirementsArgs(
                                requests={"cpu": "50m", "memory": "96Mi"}, limits={"memory": "192Mi"}),
                            readiness_probe=probe,
                            liveness_probe=probe,
                            security_context=security,
                            volume_mounts=[k8s.core.v1.VolumeMountArgs(name="tmp", mount_path="/tmp")],
                        )],
                        volumes=volumes,
                    ),
                ),
            ),
            opts=k8s_opts,
        )
        self.service = k8s.core.v1.Service(
            f"{name}-service",
            metadata=meta,
            spec=k8s.core.v1.ServiceSpecArgs(
                type="ClusterIP", selector=LABELS,
                ports=[k8s.core.v1.ServicePortArgs(name="http", port=RESPONDER_PORT, target_port="http")]),
            opts=k8s_opts,
        )
        self.pdb = k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb",
            metadata=meta,
            spec=k8s.policy.v1.PodDisruptionBudgetSpecArgs(
                max_unavailable=1, selector=k8s.meta.v1.LabelSelectorArgs(match_labels=LABELS)),
            opts=k8s_opts,
        )
        np = k8s.networking.v1
        self.network_policy = np.NetworkPolicy(
            f"{name}-netpol",
            metadata=meta,
            spec=np.NetworkPolicySpecArgs(
                pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=LABELS),
                policy_types=["Ingress", "Egress"],
                # In: only the interceptor (the held requests it hands over).
                ingress=[np.NetworkPolicyIngressRuleArgs(
                    from_=[interceptor_peer()], ports=[np.NetworkPolicyPortArgs(port=RESPONDER_PORT, protocol="TCP")])],
                # Out: DNS, and Prometheus for the measured cold starts.
                egress=[
                    np.NetworkPolicyEgressRuleArgs(
                        to=[np.NetworkPolicyPeerArgs(
                            namespace_selector=k8s.meta.v1.LabelSelectorArgs(
                                match_labels={"kubernetes.io/metadata.name": "kube-system"}),
                            pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels={"k8s-app": "kube-dns"}))],
                        ports=[np.NetworkPolicyPortArgs(port=53, protocol="UDP"),
                               np.NetworkPolicyPortArgs(port=53, protocol="TCP")]),
                    np.NetworkPolicyEgressRuleArgs(
                        to=[np.NetworkPolicyPeerArgs(
                            namespace_selector=k8s.meta.v1.LabelSelectorArgs(
                                match_labels={"kubernetes.io/metadata.name": prometheus_namespace}),
                            pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=prometheus_pod_labels))],
                        ports=[np.NetworkPolicyPortArgs(port=PROMETHEUS_PORT, protocol="TCP")]),
                ],
            ),
            opts=k8s_opts,
        )
        self.register_outputs({})
