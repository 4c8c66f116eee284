"""`ApiNamespace`: where every API's pods live.

Pod Security `restricted`; all ingress and egress denied by default (each API admits its load balancer and
Prometheus and reaches DNS plus what its `networking.egress` declares); and the AWS Load Balancer
Controller's readiness gate injected into every pod, so a rolling update waits until each new pod is a
healthy ALB target before it removes an old one.
"""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from ..addons import READINESS_GATE_LABEL, pss_labels


class ApiNamespace(pulumi.ComponentResource):
    name: str

    def __init__(self, name: str, namespace: str, opts: pulumi.ResourceOptions | None = None):
        super().__init__("myelin:apis:ApiNamespace", name, None, opts)
        self.name = namespace
        child = pulumi.ResourceOptions(parent=self)
        self.namespace = k8s.core.v1.Namespace(
            name,
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=namespace,
                labels={**pss_labels("restricted"), "app.kubernetes.io/part-of": "myelin",
                        READINESS_GATE_LABEL: "enabled"},
            ),
            opts=child,
        )
        self.default_deny = k8s.networking.v1.NetworkPolicy(
            f"{name}-default-deny",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="default-deny", namespace=namespace),
            spec=k8s.networking.v1.NetworkPolicySpecArgs(
                pod_selector=k8s.meta.v1.LabelSelectorArgs(), policy_types=["Ingress", "Egress"]
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.namespace]),
        )
        self.register_outputs({"name": namespace})
