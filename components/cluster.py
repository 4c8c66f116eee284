"""`Cluster`: EKS control plane, node groups (system, CPU, GPU) and the Kubernetes provider.

Node groups are plain `aws.eks.NodeGroup`s (managed node groups) so their every setting is explicit and
checked by the policy pack: private subnets, a launch template with IMDSv2 (hop limit 1) and encrypted
volumes, no SSH. Spot groups are preferred by the cluster-autoscaler's priority expander; the on-demand
group of the same pool is the fallback and carries the on-demand base.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_eks as eks
import pulumi_kubernetes as k8s

from .config import ClusterConfig, NodePoolConfig
from .labels import CAPACITY_LABEL, POOL_LABEL
from .network import Network

GPU_TAINT_KEY = "nvidia.com/gpu"
GPU_NODE_SELECTOR = {POOL_LABEL: "gpu"}
CPU_NODE_SELECTOR = {POOL_LABEL: "cpu"}
SYSTEM_NODE_SELECTOR = {POOL_LABEL: "system"}

_NODE_POLICIES = (
    "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
    "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly",
    "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy",
)


@dataclass(frozen=True)
class NodeGroupInfo:
    name: str  # node group name, matched by the autoscaler's priority expander
    pool: str  # system | cpu | gpu
    capacity_type: str  # SPOT | ON_DEMAND


class Cluster(pulumi.ComponentResource):
    """An EKS cluster (or an existing one, from its kubeconfig) and a Kubernetes provider for it."""

    provider: k8s.Provider
    cluster_name: str
    kubeconfig: pulumi.Output[str]
    oidc_provider_arn: pulumi.Output[str]
    oidc_provider_url: pulumi.Output[str]
    node_groups: list[NodeGroupInfo]

    def __init__(self, name: str, config: ClusterConfig, network: Network, stack: str,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("myelin:infra:Cluster", name, None, opts)
        self.node_groups = []
        child = pulumi.ResourceOptions(parent=self)
        if config.existing:
            ex = config.existing
            self.cluster_name = ex.cluster_name
            self.kubeconfig = pulumi.Output.secret(ex.kubeconfig)
            self.oidc_provider_arn = pulumi.Output.from_input(ex.oidc_provider_arn)
            self.oidc_provider_url = pulumi.Output.from_input(ex.oidc_provider_url)
            self.provider = k8s.Provider(f"{name}-k8s", kubeconfig=self.kubeconfig, opts=child)
            self.register_outputs({"cluster_name": self.cluster_name})
            return

        self.cluster_name = name
        key = aws.kms.Key(
            f"{name}-secrets",
            description=f"Envelope encryption of Kubernetes secrets in {name}",
            enable_key_rotation=True,
            deletion_window_in_days=7 if stack != "prod" else 30,
            opts=child,
        )
        public_access = bool(config.endpoint_public_access_cidrs)
        access_entries = {
            f"admin-{i}": eks.AccessEntryArgs(
                principal_arn=arn,
                access_policies={
                    "admin": eks.AccessPolicyAssociationArgs(
                        policy_arn="arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy",
                        access_scope=aws.eks.AccessPolicyAssociationAccessScopeArgs(type="cluster"),
                    )
                },
            )
            for i, arn in enumerate(config.admin_principal_arns)
        }
        self.eks = eks.Cluster(
            name,
            name=name,
            version=config.version,
            vpc_id=network.vpc_id,
            public_subnet_ids=network.public_subnet_ids,
            private_subnet_ids=network.private_subnet_ids,
            node_associate_public_ip_address=False,
            skip_default_node_group=True,
            create_oidc_provider=True,
            authentication_mode=eks.AuthenticationMode.API,
            access_entries=access_entries or None,
            encryption_config_key_arn=key.arn,
            enabled_cluster_log_types=list(config.log_types),
            endpoint_private_access=True,
            endpoint_public_access=public_access,
            public_access_cidrs=list(config.endpoint_public_access_cidrs) if public_access else None,
            deletion_protection=config.deletion_protection,
            # NetworkPolicies are enforced by the VPC CNI only with this switch on.
            vpc_cni_options=eks.VpcCniOptionsArgs(enable_network_policy=True),
            tags={"myelin:stack": stack},
            opts=child,
        )
        self.kubeconfig = pulumi.Output.secret(self.eks.kubeconfig_json)
        self.oidc_provider_arn = self.eks.oidc_provider_arn
        self.oidc_provider_url = self.eks.oidc_provider_url

        node_role = aws.iam.Role(
            f"{name}-nodes",
            assume_role_policy=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
                    ],
                }
            ),
            opts=child,
        )
        attachments = [
            aws.iam.RolePolicyAttachment(f"{name}-nodes-{arn.rsplit('/', 1)[1]}", role=node_role.name,
                                         policy_arn=arn, opts=child)
            for arn in _NODE_POLICIES
        ]

        def launch_template(pool: str, disk_gib: int) -> aws.ec2.LaunchTemplate:
            return aws.ec2.LaunchTemplate(
                f"{name}-{pool}",
                description=f"{name} {pool} nodes: IMDSv2 only, encrypted root volume, no SSH key",
                metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                    http_endpoint="enabled",
                    http_tokens="required",
                    # 1 hop: pods cannot reach the node's credentials; controllers use IRSA instead.
                    http_put_response_hop_limit=1,
                ),
                block_device_mappings=[
                    aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                        device_name="/dev/xvda",
                        ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                            volume_size=disk_gib, volume_type="gp3", encrypted="true", delete_on_termination="true"
                        ),
                    )
                ],
                tag_specifications=[
                    aws.ec2.LaunchTemplateTagSpecificationArgs(
                        resource_type="instance", tags={"Name": f"{name}-{pool}", "myelin:pool": pool}
                    )
                ],
                opts=child,
            )

        def node_group(group: str, pool: str, *, capacity: str, instance_types: list[str], min_size: int,
                       max_size: int, template: aws.ec2.LaunchTemplate, ami_type: str,
                       gpu: bool = False, fixed: bool = False) -> None:
            labels = {POOL_LABEL: pool, CAPACITY_LABEL: capacity.lower()}
            taints = []
            if gpu:
                labels["nvidia.com/gpu.present"] = "true"
                taints = [aws.eks.NodeGroupTaintArgs(key=GPU_TAINT_KEY, value="true", effect="NO_SCHEDULE")]
            aws.eks.NodeGroup(
                group,
                cluster_name=self.cluster_name,
                node_group_name=group,
                node_role_arn=node_role.arn,
                subnet_ids=network.private_subnet_ids,
                ami_type=ami_type,
                capacity_type=capacity,
                instance_types=instance_types,
                scaling_config=aws.eks.NodeGroupScalingConfigArgs(
                    min_size=min_size, max_size=max_size, desired_size=max(min_size, 1 if fixed else min_size)
                ),
                update_config=aws.eks.NodeGroupUpdateConfigArgs(max_unavailable=1),
                launch_template=aws.eks.NodeGroupLaunchTemplateArgs(id=template.id,
                                                                   version=template.latest_version.apply(str)),
                labels=labels,
                taints=taints or None,
                tags={
                    "k8s.io/cluster-autoscaler/enabled": "true",
                    f"k8s.io/cluster-autoscaler/{self.cluster_name}": "owned",
                },
                opts=pulumi.ResourceOptions(
                    parent=self,
                    depends_on=[self.eks, *attachments],
                    # The cluster-autoscaler owns the desired size: do not fight it on every `pulumi up`.
                    ignore_changes=["scalingConfig.desiredSize"],
                ),
            )
            self.node_groups.append(NodeGroupInfo(group, pool, capacity))

        system = config.system_nodes
        node_group(f"{name}-system", "system", capacity="ON_DEMAND", instance_types=[system.instance_type],
                   min_size=system.size, max_size=system.size, template=launch_template("system", 30),
                   ami_type="AL2023_x86_64_STANDARD", fixed=True)

        def pool_groups(pool: str, cfg: NodePoolConfig, ami_type: str, gpu: bool) -> None:
            template = launch_template(pool, cfg.disk_size_gib)
            spot_min = max(cfg.min_size - cfg.on_demand_base, 0) if cfg.spot else 0
            if cfg.spot:
                node_group(f"{name}-{pool}-spot", pool, capacity="SPOT", instance_types=cfg.instance_types,
                           min_size=spot_min, max_size=cfg.max_size, template=template, ami_type=ami_type, gpu=gpu)
            od_min = cfg.on_demand_base if cfg.spot else max(cfg.min_size, cfg.on_demand_base)
            node_group(f"{name}-{pool}-ondemand", pool, capacity="ON_DEMAND", instance_types=cfg.instance_types,
                       min_size=od_min, max_size=cfg.max_size, template=template, ami_type=ami_type, gpu=gpu)

        pool_groups("cpu", config.cpu_nodes, "AL2023_x86_64_STANDARD", gpu=False)
        if config.gpu_nodes:
            pool_groups("gpu", config.gpu_nodes, config.gpu_nodes.ami_type, gpu=True)

        self.provider = k8s.Provider(f"{name}-k8s", kubeconfig=self.kubeconfig, opts=child)
        self.register_outputs({"cluster_name": self.cluster_name, "kubeconfig": self.kubeconfig})
