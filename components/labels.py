"""Kubernetes label keys Myelin puts on nodes and pods, and their names in kube-state-metrics series."""

from __future__ import annotations

import re

#: Node labels (cluster.py sets them on every managed node group).
POOL_LABEL = "myelin.dev/pool"  # system | cpu | gpu
CAPACITY_LABEL = "myelin.dev/capacity"  # spot | on_demand
#: Pod label naming the API (PredictorApi sets it; the value is the API's name).
API_POD_LABEL = "app.kubernetes.io/name"


def ksm_label(key: str) -> str:
    """The label kube-state-metrics gives a Kubernetes label in kube_*_labels (its SanitizeLabelName + `label_`)."""
    return "label_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)
