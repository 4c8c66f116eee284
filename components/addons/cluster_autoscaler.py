"""cluster-autoscaler: adds nodes for pending pods (spot first, on-demand as the fallback), removes idle ones."""

from __future__ import annotations

from .. import versions
from ..cluster import SYSTEM_NODE_SELECTOR
from .base import AddonContext

SERVICE_ACCOUNT = "cluster-autoscaler"


class ClusterAutoscaler:
    def __init__(self, ctx: AddonContext):
        name = ctx.cluster.cluster_name
        self.role = ctx.irsa(
            "cluster-autoscaler",
            "kube-system",
            SERVICE_ACCOUNT,
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Sid": "Discover",
                        "Effect": "Allow",
                        "Action": [
                            "autoscaling:DescribeAutoScalingGroups",
                            "autoscaling:DescribeAutoScalingInstances",
                            "autoscaling:DescribeLaunchConfigurations",
                            "autoscaling:DescribeScalingActivities",
                            "autoscaling:DescribeTags",
                            "ec2:DescribeImages",
                            "ec2:DescribeInstanceTypes",
                            "ec2:DescribeLaunchTemplateVersions",
                            "ec2:GetInstanceTypesFromInstanceRequirements",
                            "eks:DescribeNodegroup",
                        ],
                        "Resource": "*",
                    },
                    {
                        "Sid": "ScaleOwnGroupsOnly",
                        "Effect": "Allow",
                        "Action": ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"],
                        "Resource": "*",
                        "Condition": {"StringEquals": {f"aws:ResourceTag/k8s.io/cluster-autoscaler/{name}": "owned"}},
                    },
                ],
            },
        )
        # Spot groups first; the on-demand group of the same pool is the fallback.
        priorities = {"50": [".*-spot-.*"], "10": [".*"]}
        self.release = ctx.release(
            "cluster-autoscaler",
            versions.CLUSTER_AUTOSCALER,
            "kube-system",
            {
                "cloudProvider": "aws",
                "awsRegion": ctx.config.region,
                "autoDiscovery": {"clusterName": name},
                "rbac": {"serviceAccount": {"name": SERVICE_ACCOUNT,
                                            "annotations": {"eks.amazonaws.com/role-arn": self.role.arn}}},
                "expanderPriorities": priorities,
                "extraArgs": {
                    "expander": "priority",
                    "balance-similar-node-groups": "true",
                    "skip-nodes-with-system-pods": "false",
                    "scale-down-unneeded-time": "5m",
                },
                "nodeSelector": SYSTEM_NODE_SELECTOR,
            },
            depends_on=self.role.resources,
        )
