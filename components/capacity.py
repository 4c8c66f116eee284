"""What a node of a group offers pods besides CPU, memory and GPUs: its ephemeral storage, as cluster-autoscaler
must be told for a group it scales from zero.

cluster-autoscaler 1.34 builds the node of an empty Auto Scaling group from the instance type (pods, cpu,
memory, nvidia.com/gpu: kubernetes/autoscaler cluster-autoscaler-1.34.1 cloudprovider/aws/aws_manager.go,
buildNodeFromTemplate) plus the group's `k8s.io/cluster-autoscaler/node-template/resources/<name>` tags
(extractAllocatableResourcesFromAsg). It knows no disk: without the tag, a pod that requests
`ephemeral-storage` (every API with an s3:// model: its cache volume) fits no empty group and stays Pending.

The figure, per group, is what pods can really use on a new node's disk (on AL2023 the root volume, which holds
the OS, the images and every emptyDir; on Bottlerocket the data volume, which holds the images and emptyDirs):

    ephemeral-storage = floor(disk_size_gib * 0.9) - OS reserve - images reserve   (GiB)

- `* 0.9`: the kubelet evicts pods when the file system has less than 10% free (EKS AL2023 nodeadm's
  evictionHard `nodefs.available: 10%`, awslabs/amazon-eks-ami v20251120 nodeadm/internal/kubelet/config.go;
  the same margin is kept on Bottlerocket). Its kubeReserved `ephemeral-storage: 1Gi` is smaller than the
  reserves below, so the node's own allocatable is never below this figure.
- OS reserve: what the AMI's own files take on that volume (the AL2023 AMI's root volume is 20 GiB, mostly
  free; the NVIDIA variant adds the driver, the container toolkit and fabric manager). Bottlerocket keeps its OS
  on a volume of its own: 0 on the data volume.
- images reserve: the images a node pulls, which the scheduler does not count (a Myelin CPU image, python-slim
  with CPU torch, is about 2 GiB unpacked; a GPU image with CUDA, cuDNN and CUDA torch about 10 GiB; plus the
  DaemonSets' images).

These are estimates stated here, not measurements of a node: a tag below the node's real room only makes the
autoscaler more careful. `compute.model_disk` is checked against the same figure (components/config.py).
"""

from __future__ import annotations

#: The kubelet's hard eviction threshold on the node file system (nodefs.available: 10%).
EVICTION_FREE_FRACTION = 0.10
#: GiB the OS takes on the volume that holds images and emptyDirs, by AMI type.
OS_RESERVE_GIB = {
    "AL2023_x86_64_STANDARD": 4,
    "AL2023_x86_64_NVIDIA": 10,
    "BOTTLEROCKET_x86_64_NVIDIA": 0,
}
#: GiB kept for container images, by pool.
IMAGES_RESERVE_GIB = {"cpu": 10, "gpu": 20}


def ephemeral_storage_gib(disk_size_gib: int, ami_type: str, pool: str) -> int:
    """GiB of ephemeral storage a new node of this group offers pods (the node-template resource tag)."""
    usable = int(disk_size_gib * (1 - EVICTION_FREE_FRACTION)) - OS_RESERVE_GIB[ami_type] - IMAGES_RESERVE_GIB[pool]
    if usable < 1:
        raise ValueError(f"a {pool} node with a {disk_size_gib} GiB disk ({ami_type}) leaves pods no ephemeral storage")
    return usable


def quantity(gib: int) -> str:
    return f"{gib}Gi"
