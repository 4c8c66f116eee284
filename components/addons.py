"""`Addons`: the cluster controllers, each an upstream Helm chart pinned in `versions.py`.

One small method per add-on. Controllers that call AWS get their own IRSA role with only the
permissions they need; nothing relies on the node's instance role (IMDS hop limit 1 hides it).
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
import pulumi_random as random

from . import versions
from .cluster import GPU_NODE_SELECTOR, GPU_TAINT_KEY, SYSTEM_NODE_SELECTOR, Cluster
from .config import StackConfig
from .irsa import irsa_role
from .labels import API_POD_LABEL, CAPACITY_LABEL, POOL_LABEL
from .observability import dashboards as dashboard_files
from .observability.dashboards import DATASOURCE_UID
from .observability.rules import alert_rules, alertmanager_config
from .versions import Chart

MONITORING_NAMESPACE = "monitoring"
KEDA_NAMESPACE = "keda"
LOGGING_NAMESPACE = "logging"
GPU_MONITORING_NAMESPACE = "gpu-monitoring"
GRAFANA_SERVICE = "grafana"  # `kubectl -n monitoring port-forward svc/grafana 3000:80`
GRAFANA_ADMIN_SECRET = "grafana-admin"
PROMETHEUS_URL = f"http://prometheus-server.{MONITORING_NAMESPACE}.svc.cluster.local:80"
PROMETHEUS_POD_LABELS = {"app.kubernetes.io/name": "prometheus"}

PSS_LABELS = "pod-security.kubernetes.io/{}"
PSS_EXCEPTION = "myelin.dev/pss-exception"


def pss_labels(level: str) -> dict[str, str]:
    """Pod Security Standard admission labels: enforce `level`, warn and audit at `restricted`."""
    return {
        PSS_LABELS.format("enforce"): level,
        PSS_LABELS.format("enforce-version"): "latest",
        PSS_LABELS.format("warn"): "restricted",
        PSS_LABELS.format("audit"): "restricted",
    }


class Addons(pulumi.ComponentResource):
    prometheus_url: str = PROMETHEUS_URL
    monitoring_namespace: str = MONITORING_NAMESPACE

    grafana_admin_password: pulumi.Output[str] | None = None

    def __init__(self, name: str, config: StackConfig, cluster: Cluster, vpc_id: pulumi.Input[str],
                 api_names: list[str], opts: pulumi.ResourceOptions | None = None):
        super().__init__("myelin:infra:Addons", name, None, opts)
        self._api_names = sorted(api_names)
        self._name = name
        self._cluster = cluster
        self._config = config
        self._k8s = pulumi.ResourceOptions(parent=self, provider=cluster.provider)
        self._namespaces = {
            MONITORING_NAMESPACE: self._namespace(
                MONITORING_NAMESPACE, "baseline", "prometheus-server runs with the chart's baseline security context"
            ),
            KEDA_NAMESPACE: self._namespace(KEDA_NAMESPACE, "baseline", "KEDA operator and metrics adapter"),
            LOGGING_NAMESPACE: self._namespace(
                LOGGING_NAMESPACE, "privileged", "Fluent Bit reads container logs from host paths on every node"
            ),
        }
        if config.cluster.gpu_nodes is not None:
            self._namespaces[GPU_MONITORING_NAMESPACE] = self._namespace(
                GPU_MONITORING_NAMESPACE, "privileged",
                "the DCGM exporter runs as root with SYS_ADMIN to read GPU counters on GPU nodes",
            )
        self.releases: dict[str, k8s.helm.v3.Release] = {}
        gpu = config.cluster.gpu_nodes
        if gpu is None or gpu.ami_type == "AL2023_x86_64_NVIDIA":
            # Bottlerocket NVIDIA AMIs ship the device plugin; installing a second one would double-register GPUs.
            self._nvidia_device_plugin()
        self._metrics_server()
        self._cluster_autoscaler()
        self._load_balancer_controller(vpc_id)
        self._keda()
        self._prometheus()
        if config.observability.grafana.enabled:
            self._grafana()
        if gpu is not None:
            self._dcgm_exporter()
        self._fluent_bit()
        self.register_outputs({"prometheus_url": PROMETHEUS_URL})

    # -- helpers --------------------------------------------------------------------------------

    def _namespace(self, ns: str, level: str, reason: str) -> k8s.core.v1.Namespace:
        annotations = {PSS_EXCEPTION: reason} if level != "restricted" else {}
        return k8s.core.v1.Namespace(
            f"{self._name}-{ns}",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=ns, labels=pss_labels(level), annotations=annotations),
            opts=self._k8s,
        )

    def _release(self, key: str, chart: Chart, namespace: str, values: dict[str, Any],
                 depends_on: list[pulumi.Resource] | None = None) -> k8s.helm.v3.Release:
        deps = list(depends_on or [])
        if namespace in self._namespaces:
            deps.append(self._namespaces[namespace])
        release = k8s.helm.v3.Release(
            f"{self._name}-{key}",
            name=key,
            chart=chart.chart,
            version=chart.version,
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=chart.repo),
            namespace=namespace,
            values=values,
            atomic=True,
            cleanup_on_fail=True,
            timeout=600,
            opts=pulumi.ResourceOptions.merge(self._k8s, pulumi.ResourceOptions(depends_on=deps)),
        )
        self.releases[key] = release
        return release

    def _irsa(self, key: str, namespace: str, service_account: str, policy: dict) -> aws.iam.Role:
        return irsa_role(
            f"{self._name}-{key}",
            oidc_provider_arn=self._cluster.oidc_provider_arn,
            oidc_provider_url=self._cluster.oidc_provider_url,
            namespace=namespace,
            service_account=service_account,
            policy=policy,
            parent=self,
        )

    # -- add-ons --------------------------------------------------------------------------------

    def _nvidia_device_plugin(self) -> None:
        self._release(
            "nvidia-device-plugin",
            versions.NVIDIA_DEVICE_PLUGIN,
            "kube-system",
            {
                "nodeSelector": GPU_NODE_SELECTOR,
                "tolerations": [{"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
                "priorityClassName": "system-node-critical",
            },
        )

    def _metrics_server(self) -> None:
        self._release("metrics-server", versions.METRICS_SERVER, "kube-system",
                      {"nodeSelector": SYSTEM_NODE_SELECTOR, "replicas": 2})

    def _cluster_autoscaler(self) -> None:
        name = self._cluster.cluster_name
        sa = "cluster-autoscaler"
        role = self._irsa(
            "cluster-autoscaler",
            "kube-system",
            sa,
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
        self._release(
            "cluster-autoscaler",
            versions.CLUSTER_AUTOSCALER,
            "kube-system",
            {
                "cloudProvider": "aws",
                "awsRegion": self._config.region,
                "autoDiscovery": {"clusterName": name},
                "rbac": {"serviceAccount": {"name": sa, "annotations": {"eks.amazonaws.com/role-arn": role.arn}}},
                "expanderPriorities": priorities,
                "extraArgs": {
                    "expander": "priority",
                    "balance-similar-node-groups": "true",
                    "skip-nodes-with-system-pods": "false",
                    "scale-down-unneeded-time": "5m",
                },
                "nodeSelector": SYSTEM_NODE_SELECTOR,
            },
        )

    def _load_balancer_controller(self, vpc_id: pulumi.Input[str]) -> None:
        sa = "aws-load-balancer-controller"
        # Statements follow the controller's docs/install/iam_policy.json (v2.14), less WAF, Shield and Cognito
        # (disabled below / not used): every create must carry the cluster tag, every change needs it on the resource.
        cluster_tag = "aws:ResourceTag/elbv2.k8s.aws/cluster"
        request_tag = "aws:RequestTag/elbv2.k8s.aws/cluster"
        elb_arns = [
            "arn:aws:elasticloadbalancing:*:*:targetgroup/*/*",
            "arn:aws:elasticloadbalancing:*:*:loadbalancer/app/*/*",
            "arn:aws:elasticloadbalancing:*:*:loadbalancer/net/*/*",
        ]
        role = self._irsa(
            "aws-load-balancer-controller",
            "kube-system",
            sa,
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "iam:CreateServiceLinkedRole",
                        "Resource": "*",
                        "Condition": {"StringEquals": {"iam:AWSServiceName": "elasticloadbalancing.amazonaws.com"}},
                    },
                    {
                        "Sid": "Read",
                        "Effect": "Allow",
                        "Action": [
                            "ec2:DescribeAccountAttributes",
                            "ec2:DescribeAddresses",
                            "ec2:DescribeAvailabilityZones",
                            "ec2:DescribeInternetGateways",
                            "ec2:DescribeVpcs",
                            "ec2:DescribeVpcPeeringConnections",
                            "ec2:DescribeSubnets",
                            "ec2:DescribeSecurityGroups",
                            "ec2:DescribeInstances",
                            "ec2:DescribeNetworkInterfaces",
                            "ec2:DescribeTags",
                            "ec2:DescribeCoipPools",
                            "ec2:GetCoipPoolUsage",
                            "ec2:DescribeRouteTables",
                            "ec2:GetSecurityGroupsForVpc",
                            "ec2:DescribeIpamPools",
                            "elasticloadbalancing:Describe*",
                            "acm:ListCertificates",
                            "acm:DescribeCertificate",
                        ],
                        "Resource": "*",
                    },
                    {
                        "Sid": "SecurityGroups",
                        "Effect": "Allow",
                        "Action": [
                            "ec2:CreateSecurityGroup",
                            "ec2:AuthorizeSecurityGroupIngress",
                            "ec2:RevokeSecurityGroupIngress",
                        ],
                        "Resource": "*",
                    },
                    {
                        # Tags only on the security group being created, and only with the cluster tag set.
                        "Sid": "TagNewSecurityGroups",
                        "Effect": "Allow",
                        "Action": "ec2:CreateTags",
                        "Resource": "arn:aws:ec2:*:*:security-group/*",
                        "Condition": {
                            "StringEquals": {"ec2:CreateAction": "CreateSecurityGroup"},
                            "Null": {request_tag: "false"},
                        },
                    },
                    {
                        # Retag its own groups, without touching the cluster tag itself.
                        "Sid": "TagOwnSecurityGroups",
                        "Effect": "Allow",
                        "Action": ["ec2:CreateTags", "ec2:DeleteTags"],
                        "Resource": "arn:aws:ec2:*:*:security-group/*",
                        "Condition": {"Null": {request_tag: "true", cluster_tag: "false"}},
                    },
                    {
                        "Sid": "DeleteOwnSecurityGroups",
                        "Effect": "Allow",
                        "Action": "ec2:DeleteSecurityGroup",
                        "Resource": "*",
                        "Condition": {"Null": {cluster_tag: "false"}},
                    },
                    {
                        # Load balancers and target groups are created only carrying the cluster tag.
                        "Sid": "CreateTaggedLoadBalancers",
                        "Effect": "Allow",
                        "Action": ["elasticloadbalancing:CreateLoadBalancer", "elasticloadbalancing:CreateTargetGroup"],
                        "Resource": "*",
                        "Condition": {"Null": {request_tag: "false"}},
                    },
                    {
                        "Sid": "TagOnCreate",
                        "Effect": "Allow",
                        "Action": "elasticloadbalancing:AddTags",
                        "Resource": elb_arns,
                        "Condition": {
                            "StringEquals": {
                                "elasticloadbalancing:CreateAction": ["CreateTargetGroup", "CreateLoadBalancer"]
                            },
                            "Null": {request_tag: "false"},
                        },
                    },
                    {
                        "Sid": "TagOwnLoadBalancers",
                        "Effect": "Allow",
                        "Action": ["elasticloadbalancing:AddTags", "elasticloadbalancing:RemoveTags"],
                        "Resource": elb_arns,
                        "Condition": {"Null": {request_tag: "true", cluster_tag: "false"}},
                    },
                    {
                        "Sid": "TagListenersAndRules",
                        "Effect": "Allow",
                        "Action": ["elasticloadbalancing:AddTags", "elasticloadbalancing:RemoveTags"],
                        "Resource": [
                            "arn:aws:elasticloadbalancing:*:*:listener/app/*/*/*",
                            "arn:aws:elasticloadbalancing:*:*:listener/net/*/*/*",
                            "arn:aws:elasticloadbalancing:*:*:listener-rule/app/*/*/*",
                            "arn:aws:elasticloadbalancing:*:*:listener-rule/net/*/*/*",
                        ],
                    },
                    {
                        "Sid": "ManageOwnLoadBalancers",
                        "Effect": "Allow",
                        "Action": [
                            "elasticloadbalancing:ModifyLoadBalancerAttributes",
                            "elasticloadbalancing:SetIpAddressType",
                            "elasticloadbalancing:SetSecurityGroups",
                            "elasticloadbalancing:SetSubnets",
                            "elasticloadbalancing:DeleteLoadBalancer",
                            "elasticloadbalancing:ModifyTargetGroup",
                            "elasticloadbalancing:ModifyTargetGroupAttributes",
                            "elasticloadbalancing:DeleteTargetGroup",
                            "elasticloadbalancing:ModifyListenerAttributes",
                            "elasticloadbalancing:ModifyCapacityReservation",
                            "elasticloadbalancing:ModifyIpPools",
                        ],
                        "Resource": "*",
                        "Condition": {"Null": {cluster_tag: "false"}},
                    },
                    {
                        "Sid": "Targets",
                        "Effect": "Allow",
                        "Action": ["elasticloadbalancing:RegisterTargets", "elasticloadbalancing:DeregisterTargets"],
                        "Resource": "arn:aws:elasticloadbalancing:*:*:targetgroup/*/*",
                    },
                    {
                        # SetRulePriorities: an IngressGroup reorders the rules of its shared listener.
                        "Sid": "ListenersAndRules",
                        "Effect": "Allow",
                        "Action": [
                            "elasticloadbalancing:CreateListener",
                            "elasticloadbalancing:DeleteListener",
                            "elasticloadbalancing:CreateRule",
                            "elasticloadbalancing:DeleteRule",
                            "elasticloadbalancing:ModifyListener",
                            "elasticloadbalancing:ModifyRule",
                            "elasticloadbalancing:SetRulePriorities",
                            "elasticloadbalancing:AddListenerCertificates",
                            "elasticloadbalancing:RemoveListenerCertificates",
                        ],
                        "Resource": "*",
                    },
                ],
            },
        )
        self._release(
            "aws-load-balancer-controller",
            versions.AWS_LOAD_BALANCER_CONTROLLER,
            "kube-system",
            {
                "clusterName": self._cluster.cluster_name,
                # Explicit region and VPC: the controller cannot (and need not) read them from IMDS.
                "region": self._config.region,
                "vpcId": vpc_id,
                "replicaCount": 2,
                "serviceAccount": {"create": True, "name": sa,
                                   "annotations": {"eks.amazonaws.com/role-arn": role.arn}},
                "enableShield": False,
                "enableWaf": False,
                "enableWafv2": False,
                "nodeSelector": SYSTEM_NODE_SELECTOR,
            },
        )

    def _keda(self) -> None:
        # KEDA only queries the in-cluster Prometheus: it calls no AWS API and gets no IAM role.
        self._release("keda", versions.KEDA, KEDA_NAMESPACE, {"nodeSelector": SYSTEM_NODE_SELECTOR})

    def _prometheus(self) -> None:
        obs = self._config.observability
        receiver = obs.alerts.receiver
        alertmanager: dict[str, Any] = {
            "enabled": True,
            "persistence": {"enabled": False},  # silences do not outlive a restart: no EBS volume needed
            "config": alertmanager_config(receiver, self._config.region),
            "nodeSelector": SYSTEM_NODE_SELECTOR,
        }
        if receiver is not None and receiver.sns_topic_arn:
            sa = "alertmanager"
            role = self._irsa("alertmanager", MONITORING_NAMESPACE, sa, {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "sns:Publish", "Resource": receiver.sns_topic_arn}],
            })
            alertmanager["serviceAccount"] = {"create": True, "name": sa,
                                              "annotations": {"eks.amazonaws.com/role-arn": role.arn}}
        self._release(
            "prometheus",
            versions.PROMETHEUS,
            MONITORING_NAMESPACE,
            {
                "server": {
                    "fullnameOverride": "prometheus-server",
                    "retention": self._config.observability.prometheus_retention,
                    # Short-lived autoscaling data: no EBS volume (and no CSI driver) needed.
                    "persistentVolume": {"enabled": False},
                    "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
                    "nodeSelector": SYSTEM_NODE_SELECTOR,
                },
                # Alert rules built from the same metric names as the dashboards and the KEDA trigger.
                "serverFiles": {"alerting_rules.yml": alert_rules(obs.alerts, self._api_names)},
                "alertmanager": alertmanager,
                "prometheus-pushgateway": {"enabled": False},
                "prometheus-node-exporter": {"enabled": False},
                # Replicas, pending pods and node pools for the dashboards and alerts; only the labels they use.
                "kube-state-metrics": {
                    "enabled": True,
                    "metricLabelsAllowlist": [
                        f"nodes=[{POOL_LABEL},{CAPACITY_LABEL}]",
                        f"pods=[{API_POD_LABEL}]",
                    ],
                    "nodeSelector": SYSTEM_NODE_SELECTOR,
                },
            },
        )

    def _grafana(self) -> None:
        password = random.RandomPassword(f"{self._name}-grafana-admin", length=32, special=False,
                                         opts=pulumi.ResourceOptions(parent=self))
        self.grafana_admin_password = pulumi.Output.secret(password.result)
        secret = k8s.core.v1.Secret(
            f"{self._name}-grafana-admin",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=GRAFANA_ADMIN_SECRET, namespace=MONITORING_NAMESPACE),
            string_data={"admin-user": "admin", "admin-password": self.grafana_admin_password},
            opts=pulumi.ResourceOptions.merge(self._k8s, pulumi.ResourceOptions(
                depends_on=[self._namespaces[MONITORING_NAMESPACE]])),
        )
        provider = "myelin"
        self._release(
            "grafana",
            versions.GRAFANA,
            MONITORING_NAMESPACE,
            {
                "fullnameOverride": GRAFANA_SERVICE,
                "admin": {"existingSecret": GRAFANA_ADMIN_SECRET, "userKey": "admin-user",
                          "passwordKey": "admin-password"},
                "datasources": {"datasources.yaml": {"apiVersion": 1, "datasources": [{
                    "name": "Prometheus", "type": "prometheus", "uid": DATASOURCE_UID, "url": PROMETHEUS_URL,
                    "access": "proxy", "isDefault": True, "editable": False,
                }]}},
                "dashboardProviders": {"dashboardproviders.yaml": {"apiVersion": 1, "providers": [{
                    "name": provider, "orgId": 1, "folder": "Myelin", "type": "file", "disableDeletion": True,
                    "editable": False, "options": {"path": f"/var/lib/grafana/dashboards/{provider}"},
                }]}},
                # The committed dashboard files, as they are in the repository.
                "dashboards": {provider: {
                    name.removesuffix(".json"): {"json": text} for name, text in dashboard_files.load_all().items()
                }},
                # No internet access assumed: no plugins, no update checks, no phoning home.
                "plugins": [],
                "grafana.ini": {"analytics": {"check_for_updates": False, "reporting_enabled": False},
                                "users": {"allow_sign_up": False}, "auth.anonymous": {"enabled": False}},
                "persistence": {"enabled": False},  # dashboards are provisioned from files: nothing to keep
                "testFramework": {"enabled": False},
                "nodeSelector": SYSTEM_NODE_SELECTOR,
            },
            depends_on=[secret],
        )

    def _dcgm_exporter(self) -> None:
        self._release(
            "dcgm-exporter",
            versions.DCGM_EXPORTER,
            GPU_MONITORING_NAMESPACE,
            {
                "nodeSelector": GPU_NODE_SELECTOR,
                "tolerations": [{"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
                # No prometheus-operator here: Prometheus finds the exporter through the Service annotations.
                "serviceMonitor": {"enabled": False},
                "service": {"annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9400"}},
            },
        )

    def _fluent_bit(self) -> None:
        log_group = aws.cloudwatch.LogGroup(
            f"{self._name}-containers",
            name=f"/myelin/{self._cluster.cluster_name}/containers",
            retention_in_days=self._config.observability.log_retention_days,
            opts=pulumi.ResourceOptions(parent=self),
        )
        sa = "aws-for-fluent-bit"
        role = self._irsa(
            "fluent-bit",
            LOGGING_NAMESPACE,
            sa,
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
                        "Resource": [log_group.arn, log_group.arn.apply(lambda a: f"{a}:*")],
                    },
                    {"Effect": "Allow", "Action": "logs:DescribeLogGroups", "Resource": "*"},
                ],
            },
        )
        self._release(
            "aws-for-fluent-bit",
            versions.AWS_FOR_FLUENT_BIT,
            LOGGING_NAMESPACE,
            {
                "serviceAccount": {"create": True, "name": sa,
                                   "annotations": {"eks.amazonaws.com/role-arn": role.arn}},
                "cloudWatchLogs": {
                    "enabled": True,
                    "region": self._config.region,
                    "logGroupName": log_group.name,
                    # The chart's default logGroupTemplate (one group per namespace) takes precedence over
                    # logGroupName and would write to groups that neither exist nor are in the role's policy.
                    "logGroupTemplate": "",
                    # Streams stay per pod and container (the chart's logStreamTemplate); the prefix is its fallback.
                    "logStreamPrefix": "pod-",
                    "autoCreateGroup": False,
                },
                "cloudWatch": {"enabled": False},
                "firehose": {"enabled": False},
                "kinesis": {"enabled": False},
                "elasticsearch": {"enabled": False},
                # Logs from every node, GPU nodes included.
                "tolerations": [{"operator": "Exists"}],
                # Prometheus scrapes Fluent Bit's own metrics (output errors and retries feed an alert).
                "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "2020",
                                "prometheus.io/path": "/api/v1/metrics/prometheus"},
            },
        )
