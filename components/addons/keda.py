"""KEDA: the APIs' autoscaler (ScaledObjects on the in-flight metric in Prometheus).

Version 2.20 (chart 2.20.2): KEDA's compatibility table (keda-docs, operate/cluster.md) lists Kubernetes
1.33-1.35 for 2.20; 2.18 stopped at 1.33, below the stacks' 1.34.
"""

from __future__ import annotations

from .. import versions
from ..cluster import SYSTEM_NODE_SELECTOR
from .base import KEDA_NAMESPACE, AddonContext


class Keda:
    def __init__(self, ctx: AddonContext):
        # KEDA only queries the in-cluster Prometheus: it calls no AWS API and gets no IAM role.
        self.release = ctx.release("keda", versions.KEDA, KEDA_NAMESPACE, {"nodeSelector": SYSTEM_NODE_SELECTOR})
