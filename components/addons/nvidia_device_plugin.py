"""NVIDIA device plugin: advertises `nvidia.com/gpu` on GPU nodes (AL2023 NVIDIA AMIs; Bottlerocket ships its own)."""

from __future__ import annotations

from .. import versions
from ..cluster import GPU_NODE_SELECTOR, GPU_TAINT_KEY
from .base import AddonContext


class NvidiaDevicePlugin:
    def __init__(self, ctx: AddonContext):
        self.release = ctx.release(
            "nvidia-device-plugin",
            versions.NVIDIA_DEVICE_PLUGIN,
            "kube-system",
            {
                "nodeSelector": GPU_NODE_SELECTOR,
                "tolerations": [{"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
                "priorityClassName": "system-node-critical",
            },
        )
