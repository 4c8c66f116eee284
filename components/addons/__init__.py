"""`Addons`: the cluster controllers, each an upstream Helm chart pinned in `versions.py`, one class per add-on.

Controllers that call AWS get their own IRSA role with only the permissions they need; nothing relies on the
node's instance role (IMDS hop limit 1 hides it).
"""

from __future__ import annotations

import pulumi

from ..cluster import Cluster
from ..config import InterceptorTimings, StackConfig
from .base import (
    GPU_MONITORING_NAMESPACE,
    KEDA_NAMESPACE,
    LOGGING_NAMESPACE,
    MONITORING_NAMESPACE,
    PROMETHEUS_POD_LABELS,
    PROMETHEUS_URL,
    AddonContext,
    pss_labels,
)
from .cluster_autoscaler import ClusterAutoscaler
from .dcgm_exporter import DcgmExporter
from .fluent_bit import FluentBit
from .grafana import Grafana
from .argo_rollouts import ArgoRollouts
from .keda import Keda
from .keda_http import KedaHttpAddOn
from .load_balancer_controller import READINESS_GATE_LABEL, LoadBalancerController
from .metrics_server import MetricsServer
from .nvidia_device_plugin import NvidiaDevicePlugin
from .opencost import OpenCost
from .prometheus import Prometheus

__all__ = [
    "Addons", "MONITORING_NAMESPACE", "KEDA_NAMESPACE", "LOGGING_NAMESPACE", "GPU_MONITORING_NAMESPACE",
    "PROMETHEUS_URL", "PROMETHEUS_POD_LABELS", "READINESS_GATE_LABEL", "pss_labels",
]


class Addons(pulumi.ComponentResource):
    prometheus_url: str = PROMETHEUS_URL
    monitoring_namespace: str = MONITORING_NAMESPACE
    grafana_admin_password: pulumi.Output[str] | None = None
    keda_role = None  # the KEDA operator's IRSA role, when the stack has an AsyncAPI

    def __init__(self, name: str, config: StackConfig, cluster: Cluster, vpc_id: pulumi.Input[str],
                 api_names: list[str], interceptor: InterceptorTimings | None = None, aws_scalers: bool = False,
                 canary: bool = False, opts: pulumi.ResourceOptions | None = None):
        super().__init__("myelin:infra:Addons", name, None, opts)
        ctx = AddonContext(self, name, config, cluster)
        ctx.namespace(MONITORING_NAMESPACE, "baseline", "prometheus-server runs with the chart's baseline security context")
        # The HTTP add-on's interceptors are ALB targets (IP): their pods get the controller's readiness gate.
        ctx.namespace(KEDA_NAMESPACE, "baseline", "KEDA operator and metrics adapter",
                      extra_labels={READINESS_GATE_LABEL: "enabled"} if interceptor is not None else None)
        ctx.namespace(LOGGING_NAMESPACE, "privileged", "Fluent Bit reads container logs from host paths on every node")
        gpu = config.cluster.gpu_nodes
        if gpu is not None:
            ctx.namespace(GPU_MONITORING_NAMESPACE, "privileged",
                          "the DCGM exporter runs as root with SYS_ADMIN to read GPU counters on GPU nodes")
        if gpu is None or gpu.ami_type == "AL2023_x86_64_NVIDIA":
            # Bottlerocket NVIDIA AMIs ship the device plugin; installing a second one would double-register GPUs.
            self.nvidia_device_plugin = NvidiaDevicePlugin(ctx)
        self.metrics_server = MetricsServer(ctx)
        self.cluster_autoscaler = ClusterAutoscaler(ctx)
        self.load_balancer_controller = LoadBalancerController(ctx, vpc_id)
        self.keda = Keda(ctx, aws_scalers)  # aws_scalers: an AsyncAPI's workers scale on its SQS queue
        self.keda_role = self.keda.role
        if interceptor is not None:  # an API with autoscaling.min_replicas 0: its requests are held while it wakes
            self.keda_http = KedaHttpAddOn(ctx, self.keda.release, interceptor, self.load_balancer_controller.release)
        self.prometheus = Prometheus(ctx, api_names)
        self.argo_rollouts = ArgoRollouts(ctx) if canary else None  # an API with rollout.strategy canary
        if config.observability.grafana.enabled:
            self.grafana = Grafana(ctx)
            self.grafana_admin_password = self.grafana.admin_password
        if gpu is not None:
            self.dcgm_exporter = DcgmExporter(ctx)
        self.fluent_bit = FluentBit(ctx)
        if config.observability.cost.enabled:  # per-API cost: components/observability/cost.py
            self.opencost = OpenCost(ctx)
        self.releases = ctx.releases
        self.register_outputs({"prometheus_url": PROMETHEUS_URL})
