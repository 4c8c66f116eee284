"""Every pinned version the infrastructure uses, in one place.

Bump a chart here and `pulumi preview` shows exactly which release changes.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Default EKS Kubernetes version (a stack may pin another in `myelin:cluster.version`).
KUBERNETES_VERSION = "1.34"


@dataclass(frozen=True)
class Chart:
    chart: str
    repo: str
    version: str


NVIDIA_DEVICE_PLUGIN = Chart("nvidia-device-plugin", "https://nvidia.github.io/k8s-device-plugin", "0.17.1")
METRICS_SERVER = Chart("metrics-server", "https://kubernetes-sigs.github.io/metrics-server/", "3.13.0")
# cluster-autoscaler minor follows the Kubernetes minor: chart 9.52.x ships CA 1.34.
CLUSTER_AUTOSCALER = Chart("cluster-autoscaler", "https://kubernetes.github.io/autoscaler", "9.52.1")
AWS_LOAD_BALANCER_CONTROLLER = Chart("aws-load-balancer-controller", "https://aws.github.io/eks-charts", "1.14.0")
KEDA = Chart("keda", "https://kedacore.github.io/charts", "2.18.0")
PROMETHEUS = Chart("prometheus", "https://prometheus-community.github.io/helm-charts", "27.41.0")
AWS_FOR_FLUENT_BIT = Chart("aws-for-fluent-bit", "https://aws.github.io/eks-charts", "0.1.35")
# Grafana 12.3.1 (chart values checked at grafana/helm-charts tag grafana-10.5.15).
GRAFANA = Chart("grafana", "https://grafana.github.io/helm-charts", "10.5.15")
# DCGM exporter 4.5.3-4.8.2 (chart in NVIDIA/dcgm-exporter deployment/, tag 4.5.3-4.8.2).
DCGM_EXPORTER = Chart("dcgm-exporter", "https://nvidia.github.io/dcgm-exporter/helm-charts", "4.8.2")

ALL_CHARTS = (
    NVIDIA_DEVICE_PLUGIN,
    METRICS_SERVER,
    CLUSTER_AUTOSCALER,
    AWS_LOAD_BALANCER_CONTROLLER,
    KEDA,
    PROMETHEUS,
    AWS_FOR_FLUENT_BIT,
    GRAFANA,
    DCGM_EXPORTER,
)

#: Base images of the predictor image (build arg BASE_IMAGE). The GPU one carries CUDA and cuDNN runtimes.
CPU_BASE_IMAGE = "python:3.11-slim-bookworm"
GPU_BASE_IMAGE = "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04"
