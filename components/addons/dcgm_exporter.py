"""NVIDIA DCGM exporter on GPU nodes: GPU utilisation and memory per node and per pod, scraped by Prometheus."""

from __future__ import annotations

from .. import versions
from ..cluster import GPU_NODE_SELECTOR, GPU_TAINT_KEY
from .base import GPU_MONITORING_NAMESPACE, AddonContext


class DcgmExporter:
    def __init__(self, ctx: AddonContext):
        self.release = ctx.release(
            "dcgm-exporter",
            versions.DCGM_EXPORTER,
            GPU_MONITORING_NAMESPACE,
            {
                "nodeSelector": GPU_NODE_SELECTOR,
                "tolerations": [{"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
                # No prometheus-operator here: Prometheus finds the exporter through the Service annotations.
                "serviceMonitor": {"enabled": False},
                "service": {"annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9400"}},
            },
        )
