"""What cluster-autoscaler 1.34 sees of an empty node group, and whether a pod fits it.

The template node of an Auto Scaling group with no node (kubernetes/autoscaler tag cluster-autoscaler-1.34.1,
cluster-autoscaler/cloudprovider/aws/aws_manager.go, buildNodeFromTemplate): capacity = allocatable = pods 110,
cpu, memory and nvidia.com/gpu of the group's first instance type (aws_wrapper.go getInstanceTypesForAsgs:
`instanceTypesOverrides[0]` of the mixed instances policy a managed node group has), then every
`k8s.io/cluster-autoscaler/node-template/resources/<name>` tag; labels: the generic ones plus every
`.../node-template/label/<key>` tag; taints: every `.../node-template/taint/<key>` tag (`<value>:<effect>`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

TEMPLATE = "k8s.io/cluster-autoscaler/node-template/"

#: (vCPU, MiB, GPUs) of the instance types the stacks use, as cluster-autoscaler-1.34.1
#: cloudprovider/aws/ec2_instance_types.go lists them. A stack naming another type fails the test until its
#: line is added here from that file.
INSTANCE_TYPES: dict[str, tuple[int, int, int]] = {
    "t3.medium": (2, 4096, 0),
    "m5.large": (2, 8192, 0),
    "m6a.large": (2, 8192, 0),
    "m6i.large": (2, 8192, 0),
    "m6a.xlarge": (4, 16384, 0),
    "m6i.xlarge": (4, 16384, 0),
    "m7i.xlarge": (4, 16384, 0),
    "g4dn.xlarge": (4, 16384, 1),
    "g5.xlarge": (4, 16384, 1),
    "g5.2xlarge": (8, 32768, 1),
    "g6.xlarge": (4, 16384, 1),
    "g6.2xlarge": (8, 32768, 1),
}

_SUFFIX = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value: Any) -> float:
    """A Kubernetes quantity ('250m', '1Gi', '2', 0.5) as a number."""
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    assert m and m.group(2) in _SUFFIX, f"not a quantity: {value!r}"
    return float(m.group(1)) * _SUFFIX[m.group(2)]


@dataclass
class TemplateNode:
    group: str
    instance_type: str
    labels: dict[str, str]
    taints: list[dict[str, str]]
    allocatable: dict[str, float]


@dataclass
class Pod:
    name: str
    node_selector: dict[str, str]
    tolerations: list[dict[str, Any]]
    requests: dict[str, float] = field(default_factory=dict)


def template_node(group: str, instance_type: str, tags: dict[str, str]) -> TemplateNode:
    vcpu, mib, gpus = INSTANCE_TYPES[instance_type]
    allocatable = {"pods": 110.0, "cpu": float(vcpu), "memory": float(mib) * 2**20, "nvidia.com/gpu": float(gpus)}
    labels = {"kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux",
              "node.kubernetes.io/instance-type": instance_type}
    taints = []
    for key, value in tags.items():
        rest = key.removeprefix(TEMPLATE)
        if rest == key:
            continue
        if rest.startswith("resources/"):
            allocatable[rest.removeprefix("resources/")] = quantity(value)
        elif rest.startswith("label/"):
            labels[rest.removeprefix("label/")] = value
        elif rest.startswith("taint/"):
            m = re.fullmatch(r"(.*):(NoSchedule|NoExecute|PreferNoSchedule)", value)
            if m:
                taints.append({"key": rest.removeprefix("taint/"), "value": m.group(1), "effect": m.group(2)})
    return TemplateNode(group, instance_type, labels, taints, allocatable)


def pod_of(deployment: dict) -> Pod:
    spec = deployment["spec"]["template"]["spec"]
    requests: dict[str, float] = {"pods": 1.0}
    for c in spec["containers"]:
        for name, value in ((c.get("resources") or {}).get("requests") or {}).items():
            requests[name] = requests.get(name, 0.0) + quantity(value)
    return Pod(f'{deployment["metadata"]["namespace"]}/{deployment["metadata"]["name"]}',
               spec.get("nodeSelector") or {}, spec.get("tolerations") or [], requests)


def _tolerates(tolerations: list[dict[str, Any]], taint: dict[str, str]) -> bool:
    for t in tolerations:
        if t.get("effect") not in (None, "", taint["effect"]):
            continue
        if t.get("operator") == "Exists" and t.get("key") in (None, "", taint["key"]):
            return True
        if t.get("key") == taint["key"] and t.get("value", "") == taint["value"]:
            return True
    return False


def misfit(pod: Pod, node: TemplateNode) -> list[str]:
    """Why `pod` does not fit `node` (the scheduler's NodeAffinity, TaintToleration and NodeResourcesFit)."""
    why = [f"label {k}={v} missing" for k, v in pod.node_selector.items() if node.labels.get(k) != v]
    why += [f"taint {t['key']}={t['value']}:{t['effect']} not tolerated" for t in node.taints
            if t["effect"] in ("NoSchedule", "NoExecute") and not _tolerates(pod.tolerations, t)]
    why += [f"{name}: requests {amount:g}, node has {node.allocatable.get(name, 0.0):g}"
            for name, amount in pod.requests.items() if amount > node.allocatable.get(name, 0.0)]
    return why
