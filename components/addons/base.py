"""What every add-on shares: its Helm release, namespace, and IRSA role helpers, bound to one `Addons` component."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from ..cluster import Cluster
from ..config import StackConfig
from ..irsa import IrsaRole, irsa_role
from ..versions import Chart

MONITORING_NAMESPACE = "monitoring"
KEDA_NAMESPACE = "keda"
LOGGING_NAMESPACE = "logging"
GPU_MONITORING_NAMESPACE = "gpu-monitoring"
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


@dataclass
class AddonContext:
    """The `Addons` component's shared state: each add-on class registers its resources through it."""

    component: pulumi.ComponentResource
    name: str
    config: StackConfig
    cluster: Cluster
    releases: dict[str, k8s.helm.v3.Release] = field(default_factory=dict)
    namespaces: dict[str, k8s.core.v1.Namespace] = field(default_factory=dict)

    @property
    def k8s_opts(self) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self.component, provider=self.cluster.provider)

    @property
    def aws_opts(self) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self.component)

    def namespace(self, ns: str, level: str, reason: str,
                  extra_labels: dict[str, str] | None = None) -> k8s.core.v1.Namespace:
        annotations = {PSS_EXCEPTION: reason} if level != "restricted" else {}
        self.namespaces[ns] = k8s.core.v1.Namespace(
            f"{self.name}-{ns}",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=ns, labels={**pss_labels(level), **(extra_labels or {})},
                                                annotations=annotations),
            opts=self.k8s_opts,
        )
        return self.namespaces[ns]

    def release(self, key: str, chart: Chart, namespace: str, values: dict[str, Any],
                depends_on: list[pulumi.Resource] | None = None) -> k8s.helm.v3.Release:
        deps = list(depends_on or [])
        if namespace in self.namespaces:
            deps.append(self.namespaces[namespace])
        release = k8s.helm.v3.Release(
            f"{self.name}-{key}",
            name=key,
            chart=chart.chart,
            version=chart.version,
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=chart.repo),
            namespace=namespace,
            values=values,
            atomic=True,
            cleanup_on_fail=True,
            timeout=600,
            opts=pulumi.ResourceOptions.merge(self.k8s_opts, pulumi.ResourceOptions(depends_on=deps)),
        )
        self.releases[key] = release
        return release

    def irsa(self, key: str, namespace: str, service_account: str, policy: dict) -> IrsaRole:
        return irsa_role(
            f"{self.name}-{key}",
            oidc_provider_arn=self.cluster.oidc_provider_arn,
            oidc_provider_url=self.cluster.oidc_provider_url,
            namespace=namespace,
            service_account=service_account,
            policy=policy,
            parent=self.component,
        )

    def log_group(self, key: str, name: pulumi.Input[str]) -> aws.cloudwatch.LogGroup:
        return aws.cloudwatch.LogGroup(
            f"{self.name}-{key}", name=name,
            retention_in_days=self.config.observability.log_retention_days, opts=self.aws_opts,
        )
