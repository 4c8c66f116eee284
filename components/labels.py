"""Kubernetes label keys Myelin puts on nodes and pods, their names in kube-state-metrics series, and the
Deployment names that dashboards and alerts look up in kube-state-metrics."""

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


#: An AsyncAPI runs as two Deployments (myelin.contract, roles): the gateway is named after the API, its
#: workers `<api>-worker`. The dashboards and alerts read the workers' replicas under this name; the
#: component that deploys AsyncAPIs must create the worker Deployment under it too.
ASYNC_WORKER_SUFFIX = "-worker"


def async_worker_deployment(api: str) -> str:
    """The worker Deployment of AsyncAPI `api` (`api` may be a dashboard variable such as `$api`)."""
    return f"{api}{ASYNC_WORKER_SUFFIX}"
