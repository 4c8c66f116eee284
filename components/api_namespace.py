"""`ApiNamespace`: where every PredictorApi lives: Pod Security `restricted`, ingress denied by default."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from .addons import pss_labels


class ApiNamespace(pulumi.ComponentResource):
    name: str

    def __init__(self, name: str, namespace: str, opts: pulumi.ResourceOptions | None = None):
        super().__init__("myelin:apis:ApiNamespace", name, None, opts)
        self.name = namespace
        child = pulumi.ResourceOptions(parent=self)
        self.namespace = k8s.core.v1.Namespace(
            name,
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=namespace, labels={**pss_labels("restricted"), "app.kubernetes.io/part-of": "myelin"}
            ),
            opts=child,
        )
        # Deny all ingress; each PredictorApi then admits only its load balancer and Prometheus.
        k8s.networking.v1.NetworkPolicy(
            f"{name}-default-deny",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="default-deny-ingress", namespace=namespace),
            spec=k8s.networking.v1.NetworkPolicySpecArgs(
                pod_selector=k8s.meta.v1.LabelSelectorArgs(), policy_types=["Ingress"]
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.namespace]),
        )
        self.register_outputs({"name": namespace})
