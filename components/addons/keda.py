"""KEDA: the APIs' autoscaler (ScaledObjects on the in-flight metric in Prometheus, and on SQS queues).

Version 2.20 (chart 2.20.2): KEDA's compatibility table (keda-docs, operate/cluster.md) lists Kubernetes
1.33-1.35 for 2.20; 2.18 stopped at 1.33, below the stacks' 1.34.

With an AsyncAPI in the stack the operator gets an IRSA role (chart values `podIdentity.aws.irsa`, which
annotate its ServiceAccount keda/keda-operator): its `aws-sqs-queue` scalers read queue depths with it
(TriggerAuthentication `podIdentity.provider: aws`). The role has no permission of its own; each AsyncAPI
grants it `sqs:GetQueueAttributes` on its own queue (components/apis/asyncapi.py).
"""

from __future__ import annotations

import pulumi

from .. import versions
from ..cluster import SYSTEM_NODE_SELECTOR
from ..irsa import irsa_role
from .base import KEDA_NAMESPACE, AddonContext

OPERATOR_SERVICE_ACCOUNT = "keda-operator"  # the chart's serviceAccount.operator.name
#: A pod annotation carrying the role: the chart changes only the ServiceAccount, and EKS injects IRSA
#: credentials when a pod is created, so a new role must roll the operator.
ROLE_POD_ANNOTATION = "myelin.dev/aws-role"


class Keda:
    def __init__(self, ctx: AddonContext, aws_scalers: bool = False):
        values: dict = {"nodeSelector": SYSTEM_NODE_SELECTOR}
        self.role = None
        deps: list[pulumi.Resource] = []
        if aws_scalers:
            irsa = irsa_role(
                f"{ctx.name}-keda", oidc_provider_arn=ctx.cluster.oidc_provider_arn,
                oidc_provider_url=ctx.cluster.oidc_provider_url, namespace=KEDA_NAMESPACE,
                service_account=OPERATOR_SERVICE_ACCOUNT, parent=ctx.component)
            self.role = irsa.role
            deps = irsa.resources
            values["podIdentity"] = {"aws": {"irsa": {"enabled": True, "roleArn": irsa.arn}}}
            values["podAnnotations"] = {"keda": {ROLE_POD_ANNOTATION: irsa.arn}}
        # Otherwise KEDA only queries the in-cluster Prometheus: it calls no AWS API and gets no IAM role.
        self.release = ctx.release("keda", versions.KEDA, KEDA_NAMESPACE, values, depends_on=deps)
