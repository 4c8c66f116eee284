"""metrics-server: resource metrics for `kubectl top` and resource-based autoscaling."""

from __future__ import annotations

from .. import versions
from ..cluster import SYSTEM_NODE_SELECTOR
from .base import AddonContext


class MetricsServer:
    def __init__(self, ctx: AddonContext):
        self.release = ctx.release("metrics-server", versions.METRICS_SERVER, "kube-system",
                                   {"nodeSelector": SYSTEM_NODE_SELECTOR, "replicas": 2})
