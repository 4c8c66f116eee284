"""NVIDIA GPU instance families: which GPU each carries, as cluster-autoscaler wants to be told.

cluster-autoscaler's AWS provider (cloudprovider/aws/README.md, "Special note on GPU instances") expects
GPU nodes labelled `k8s.amazonaws.com/accelerator=<gpu-type>` before they join, or it scales out again
while the device plugin is still starting. One node group carries one GPU model, so each group's label
is true for every node it can launch: the GPU pool is split into one group per model.
"""

from __future__ import annotations

ACCELERATOR_LABEL = "k8s.amazonaws.com/accelerator"

#: EC2 instance family -> accelerator label value (the GPU model, in the form the CA README uses).
GPU_FAMILIES: dict[str, str] = {
    "g4dn": "nvidia-tesla-t4",
    "g5": "nvidia-a10g",
    "g6": "nvidia-l4",
    "gr6": "nvidia-l4",
    "g6e": "nvidia-l40s",
    "p3": "nvidia-tesla-v100",
    "p3dn": "nvidia-tesla-v100",
    "p4d": "nvidia-a100",
    "p4de": "nvidia-a100",
    "p5": "nvidia-h100",
    "p5e": "nvidia-h200",
    "p5en": "nvidia-h200",
}


def family(instance_type: str) -> str:
    return instance_type.split(".", 1)[0]


def accelerator(instance_type: str) -> str:
    """The accelerator label of an instance type; ValueError for a type with no NVIDIA GPU in the table."""
    try:
        return GPU_FAMILIES[family(instance_type)]
    except KeyError:
        known = ", ".join(sorted(GPU_FAMILIES))
        raise ValueError(
            f"{instance_type!r} is not an NVIDIA GPU instance type Myelin knows (families: {known})"
        ) from None


def by_model(instance_types: list[str]) -> dict[str, list[str]]:
    """Instance types grouped by GPU model, in order of first appearance (most preferred model first)."""
    groups: dict[str, list[str]] = {}
    for itype in instance_types:
        groups.setdefault(accelerator(itype), []).append(itype)
    return groups


def short_name(model: str) -> str:
    """`nvidia-tesla-t4` -> `t4`: for node group names."""
    return model.removeprefix("nvidia-").removeprefix("tesla-")
