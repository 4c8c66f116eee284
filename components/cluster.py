"""`Cluster`: EKS control plane, node groups (system, CPU, GPU) and the Kubernetes provider.

Node groups are plain `aws.eks.NodeGroup`s (managed node groups) so their every setting is explicit and
checked by the policy pack: private subnets, a launch template with IMDSv2 (hop limit 1) and encrypted
volumes, no SSH. Spot groups are preferred by the cluster-autoscaler's priority expander; the on-demand
group of the same pool is the fallback and carries the on-demand base. GPU capacity is one pair of
groups per GPU model, each labelled `k8s.amazonaws.com/accelerator` (see gpu.py).

The Kubernetes provider depends on every node group: each Kubernetes object (Helm releases included) is
created after the nodes exist and, on `pulumi destroy`, deleted while they still run (so the load balancer
controller can still delete the ALBs of the Ingresses, and finalizers complete).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_eks as eks
import pulumi_kubernetes as k8s

from . import capacity, gpu
from .irsa import irsa_role
from .config import ClusterConfig, NodePoolConfig
from .labels import CAPACITY_LABEL, POOL_LABEL
from .network import Network

GPU_TAINT_KEY = "nvidia.com/gpu"
#: cluster-autoscaler reads a node group's labels and taints from these ASG tags when the group has no node to
#: look at (kubernetes/autoscaler cluster-autoscaler-1.34.1 cluster-autoscaler/cloudprovider/aws/README.md,
#: "Auto-Discovery Setup" / scaling a node group to 0): a pending GPU pod then brings a GPU group back from zero.
NODE_TEMPLATE_TAG = "k8s.io/cluster-autoscaler/node-template/"
#: ... and the resources the instance type does not tell it (extractAllocatableResourcesFromAsg in
#: cloudprovider/aws/aws_manager.go at that tag): the node's ephemeral storage (components/capacity.py).
EPHEMERAL_STORAGE_TAG = NODE_TEMPLATE_TAG + "resources/ephemeral-storage"
GPU_NODE_SELECTOR = {POOL_LABEL: "gpu"}
CPU_NODE_SELECTOR = {POOL_LABEL: "cpu"}
SYSTEM_NODE_SELECTOR = {POOL_LABEL: "system"}

# No AmazonEKS_CNI_Policy here: the VPC CNI (aws-node) gets it through its own IRSA role, so no pod on a
# node can borrow the node's permission to manage network interfaces.
_NODE_POLICIES = (
    "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
    "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly",
)
CNI_POLICY = "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy"
ACCESS_POLICY = "arn:aws:eks::aws:cluster-access-policy/"
#: Block devices per AMI family: (OS volume, or None when images share it; the volume that holds images).
_VOLUMES = {
    "AL2023": (None, "/dev/xvda"),
    "BOTTLEROCKET": ("/dev/xvda", "/dev/xvdb"),  # Bottlerocket: OS on xvda, images and containers on xvdb
}
_BOTTLEROCKET_OS_GIB = 4
#: The system group's root volume (fixed size: never scaled from zero, no node-template tags).
SYSTEM_DISK_GIB = 30


@dataclass(frozen=True)
class NodeGroupInfo:
    name: str  # node group name, matched by the autoscaler's priority expander
    pool: str  # system | cpu | gpu
    capacity_type: str  # SPOT | ON_DEMAND
    accelerator: str | None = None  # GPU model label value, GPU groups only
    #: The first instance type (the one cluster-autoscaler builds an empty group's node from) and the
    #: node-template tags of a group it scales from zero (None for the fixed system group).
    instance_types: tuple[str, ...] = ()
    template_tags: dict[str, str] | None = None


def template_tags(labels: dict[str, str], gpu_taint: bool, ephemeral_storage_gib: int | None) -> dict[str, str]:
    """The node-template tags of a group: its labels, its GPU taint and its ephemeral storage."""
    tags = {f"{NODE_TEMPLATE_TAG}label/{k}": v for k, v in labels.items()}
    if gpu_taint:
        tags[f"{NODE_TEMPLATE_TAG}taint/{GPU_TAINT_KEY}"] = "true:NoSchedule"
    if ephemeral_storage_gib is not None:
        tags[EPHEMERAL_STORAGE_TAG] = capacity.quantity(ephemeral_storage_gib)
    return tags


def tag_resource_name(group: str, key: str) -> str:
    """The Pulumi name of one ASG tag resource: by its key, so adding or removing a tag never renames (and so
    replaces, and with it deletes) another."""
    return f"{group}-template-" + key.removeprefix(NODE_TEMPLATE_TAG).replace("/", "-")


def legacy_tag_names(group: str, labels: dict[str, str], gpu_taint: bool) -> dict[str, str]:
    """Tag key -> the name its resource had when tags were named by their index in the sorted labels and taint
    (before the ephemeral-storage tag): the alias that lets a stack deployed then keep each tag in place."""
    return {key: f"{group}-template-{i}"
            for i, key in enumerate(sorted(template_tags(labels, gpu_taint, None)))}


def _access_entry(arn: str, policy: str) -> eks.AccessEntryArgs:
    return eks.AccessEntryArgs(
        principal_arn=arn,
        access_policies={
            policy: eks.AccessPolicyAssociationArgs(
                policy_arn=ACCESS_POLICY + policy,
                access_scope=aws.eks.AccessPolicyAssociationAccessScopeArgs(type="cluster"),
            )
        },
    )


def access_entries(config: ClusterConfig) -> dict[str, eks.AccessEntryArgs]:
    """Humans and the deploy role administer the cluster; the preview role reads everything (Helm's release
    Secrets included, which `pulumi preview` of a Helm release needs) and changes nothing."""
    entries = {f"admin-{i}": _access_entry(arn, "AmazonEKSClusterAdminPolicy")
               for i, arn in enumerate(config.admin_principal_arns)}
    ci = config.ci_access
    if ci.deploy_role_arn:
        entries["ci-deploy"] = _access_entry(ci.deploy_role_arn, "AmazonEKSClusterAdminPolicy")
    if ci.preview_role_arn:
        entries["ci-preview"] = _access_entry(ci.preview_role_arn, "AmazonEKSAdminViewPolicy")
    return entries


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
        entries = access_entries(config)
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
            access_entries=entries or None,
            encryption_config_key_arn=key.arn,
            enabled_cluster_log_types=list(config.log_types),
            endpoint_private_access=True,
            endpoint_public_access=public_access,
            public_access_cidrs=list(config.endpoint_public_access_cidrs) if public_access else None,
            deletion_protection=config.deletion_protection,
            # The VPC CNI is the EKS add-on below, with its own IAM role (it needs the OIDC provider, so it
            # cannot be passed in here without a cycle).
            use_default_vpc_cni=True,
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
        cni_role = irsa_role(
            f"{name}-vpc-cni",
            oidc_provider_arn=self.oidc_provider_arn,
            oidc_provider_url=self.oidc_provider_url,
            namespace="kube-system",
            service_account="aws-node",
            managed_policy_arns=[CNI_POLICY],
            parent=self,
        )
        # NetworkPolicies (ingress and egress) are enforced by the VPC CNI only with enableNetworkPolicy.
        self.vpc_cni = aws.eks.Addon(
            f"{name}-vpc-cni",
            cluster_name=self.cluster_name,
            addon_name="vpc-cni",
            service_account_role_arn=cni_role.role.arn,
            configuration_values=json.dumps({"enableNetworkPolicy": "true"}),
            resolve_conflicts_on_create="OVERWRITE",
            resolve_conflicts_on_update="OVERWRITE",
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.eks, *cni_role.resources]),
        )
        self.node_group_resources: list[aws.eks.NodeGroup] = []

        def launch_template(pool: str, disk_gib: int, ami_type: str) -> aws.ec2.LaunchTemplate:
            os_device, image_device = _VOLUMES["BOTTLEROCKET" if ami_type.startswith("BOTTLEROCKET") else "AL2023"]
            devices = [(image_device, disk_gib)]
            if os_device is not None:
                devices.insert(0, (os_device, _BOTTLEROCKET_OS_GIB))
            return aws.ec2.LaunchTemplate(
                f"{name}-{pool}",
                description=f"{name} {pool} nodes: IMDSv2 only, encrypted root volume, no SSH key",
                metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                    http_endpoint="enabled",
                    http_tokens="required",
                    # 1 hop: pods cannot reach the node's credentials; controllers use IRSA instead.
                    http_put_response_hop_limit=1,
                ),
                # disk_size_gib sizes the volume that holds container images (on Bottlerocket the second one).
                block_device_mappings=[
                    aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                        device_name=device,
                        ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                            volume_size=size, volume_type="gp3", encrypted="true", delete_on_termination="true"
                        ),
                    )
                    for device, size in devices
                ],
                tag_specifications=[
                    aws.ec2.LaunchTemplateTagSpecificationArgs(
                        resource_type="instance", tags={"Name": f"{name}-{pool}", "myelin:pool": pool}
                    )
                ],
                opts=child,
            )

        def node_group(group: str, pool: str, *, capacity_type: str, instance_types: list[str], min_size: int,
                       max_size: int, template: aws.ec2.LaunchTemplate, ami_type: str, disk_size_gib: int,
                       accelerator: str | None = None, fixed: bool = False) -> None:
            labels = {POOL_LABEL: pool, CAPACITY_LABEL: capacity_type.lower()}
            taints = []
            if accelerator is not None:
                labels["nvidia.com/gpu.present"] = "true"
                labels[gpu.ACCELERATOR_LABEL] = accelerator
                taints = [aws.eks.NodeGroupTaintArgs(key=GPU_TAINT_KEY, value="true", effect="NO_SCHEDULE")]
            ng = aws.eks.NodeGroup(
                group,
                cluster_name=self.cluster_name,
                node_group_name=group,
                node_role_arn=node_role.arn,
                subnet_ids=network.private_subnet_ids,
                ami_type=ami_type,
                capacity_type=capacity_type,
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
                    # The CNI add-on (with its role) first: aws-node must have its permissions when nodes join.
                    depends_on=[self.eks, *attachments, self.vpc_cni],
                    # The cluster-autoscaler owns the desired size: do not fight it on every `pulumi up`.
                    ignore_changes=["scalingConfig.desiredSize"],
                ),
            )
            tags = None
            if not fixed:
                gpu_taint = accelerator is not None
                tags = template_tags(labels, gpu_taint, capacity.ephemeral_storage_gib(disk_size_gib, ami_type, pool))
                self._node_template_tags(group, ng, tags, legacy_tag_names(group, labels, gpu_taint))
            self.node_group_resources.append(ng)
            self.node_groups.append(NodeGroupInfo(group, pool, capacity_type, accelerator, tuple(instance_types), tags))

        system = config.system_nodes
        node_group(f"{name}-system", "system", capacity_type="ON_DEMAND", instance_types=[system.instance_type],
                   min_size=system.size, max_size=system.size,
                   template=launch_template("system", SYSTEM_DISK_GIB, "AL2023_x86_64_STANDARD"),
                   ami_type="AL2023_x86_64_STANDARD", disk_size_gib=SYSTEM_DISK_GIB, fixed=True)

        def pool_groups(pool: str, group: str, cfg: NodePoolConfig, ami_type: str, instance_types: list[str],
                        template: aws.ec2.LaunchTemplate, accelerator: str | None = None) -> None:
            spot_min = max(cfg.min_size - cfg.on_demand_base, 0) if cfg.spot else 0
            if cfg.spot:
                node_group(f"{name}-{group}-spot", pool, capacity_type="SPOT", instance_types=instance_types,
                           min_size=spot_min, max_size=cfg.max_size, template=template, ami_type=ami_type,
                           disk_size_gib=cfg.disk_size_gib, accelerator=accelerator)
            od_min = cfg.on_demand_base if cfg.spot else max(cfg.min_size, cfg.on_demand_base)
            node_group(f"{name}-{group}-ondemand", pool, capacity_type="ON_DEMAND", instance_types=instance_types,
                       min_size=od_min, max_size=cfg.max_size, template=template, ami_type=ami_type,
                       disk_size_gib=cfg.disk_size_gib, accelerator=accelerator)

        cpu = config.cpu_nodes
        pool_groups("cpu", "cpu", cpu, "AL2023_x86_64_STANDARD", cpu.instance_types,
                    launch_template("cpu", cpu.disk_size_gib, "AL2023_x86_64_STANDARD"))
        if config.gpu_nodes:
            gpu_cfg = config.gpu_nodes
            template = launch_template("gpu", gpu_cfg.disk_size_gib, gpu_cfg.ami_type)
            # One pair of groups per GPU model: a group's accelerator label is then true of every node it launches.
            # Floors (min_size, on_demand_base) go to the first (most preferred) model; each group may reach max_size.
            for i, (model, types) in enumerate(gpu.by_model(gpu_cfg.instance_types).items()):
                cfg = gpu_cfg if i == 0 else gpu_cfg.model_copy(update={"min_size": 0, "on_demand_base": 0})
                pool_groups("gpu", f"gpu-{gpu.short_name(model)}", cfg, gpu_cfg.ami_type, types, template,
                            accelerator=model)

        # Every Kubernetes object goes through this provider: created after the nodes, deleted before them.
        self.provider = k8s.Provider(f"{name}-k8s", kubeconfig=self.kubeconfig,
                                     opts=pulumi.ResourceOptions(parent=self, depends_on=self.node_group_resources))
        self.register_outputs({"cluster_name": self.cluster_name, "kubeconfig": self.kubeconfig})

    def _node_template_tags(self, group: str, ng: aws.eks.NodeGroup, tags: dict[str, str],
                            legacy: dict[str, str]) -> None:
        """The group's node template as tags on its Auto Scaling group: EKS keeps node group tags on the node
        group, while the autoscaler reads the ASG's. One resource per tag, named by its key; a tag that was
        named by index before keeps its resource through an alias (no replacement, so no delete of the tag
        after its successor wrote it)."""
        asg_name = ng.resources.apply(lambda r: r[0].autoscaling_groups[0].name)
        names = {key: tag_resource_name(group, key) for key in tags}
        assert len(set(names.values())) == len(names), f"{group}: two node-template tags map to one resource name"
        for key, value in sorted(tags.items()):
            old = legacy.get(key)
            aws.autoscaling.Tag(
                names[key],
                autoscaling_group_name=asg_name,
                tag=aws.autoscaling.TagTagArgs(key=key, value=value, propagate_at_launch=False),
                opts=pulumi.ResourceOptions(parent=ng, aliases=[pulumi.Alias(name=old)] if old else None),
            )
