"""IAM roles for Kubernetes service accounts (IRSA): one role per controller, trusted only by its account.

The role's permissions (inline policy, managed policy attachments) are children of the same component as
the role, not of the role: a resource that depends on that component then depends on the permissions too,
and on `pulumi destroy` they are removed only after it (a controller never loses its permissions while it
still has work to do, such as deleting the load balancers of Ingresses).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws


@dataclass
class IrsaRole:
    role: aws.iam.Role
    #: The role and everything that grants it permissions: what a user of the role must depend on.
    resources: list[pulumi.Resource] = field(default_factory=list)

    @property
    def arn(self) -> pulumi.Output[str]:
        return self.role.arn


def trust_policy(oidc_provider_arn: str, oidc_provider_url: str, namespace: str, service_account: str) -> str:
    issuer = oidc_provider_url.removeprefix("https://")
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Federated": oidc_provider_arn},
                    "Action": "sts:AssumeRoleWithWebIdentity",
                    "Condition": {
                        "StringEquals": {
                            f"{issuer}:sub": f"system:serviceaccount:{namespace}:{service_account}",
                            f"{issuer}:aud": "sts.amazonaws.com",
                        }
                    },
                }
            ],
        }
    )


def irsa_role(
    name: str,
    *,
    oidc_provider_arn: pulumi.Input[str],
    oidc_provider_url: pulumi.Input[str],
    namespace: pulumi.Input[str],
    service_account: str,
    parent: pulumi.Resource,
    policy: pulumi.Input[dict] | None = None,
    managed_policy_arns: list[str] | None = None,
    policy_name: str | None = None,
    tags: dict[str, str] | None = None,
) -> IrsaRole:
    """A role assumable only by `system:serviceaccount:<namespace>:<service_account>`, with an inline policy
    (named `policy_name`, else auto-named) and/or AWS managed policies."""
    role = aws.iam.Role(
        f"{name}-irsa",
        assume_role_policy=pulumi.Output.all(oidc_provider_arn, oidc_provider_url, namespace).apply(
            lambda a: trust_policy(a[0], a[1], a[2], service_account)),
        description=pulumi.Output.concat("IRSA role for ", namespace, "/", service_account),
        tags=tags,
        opts=pulumi.ResourceOptions(parent=parent),
    )
    out = IrsaRole(role=role, resources=[role])
    if policy is not None:
        out.resources.append(aws.iam.RolePolicy(
            f"{name}-irsa",
            name=policy_name,
            role=role.id,
            policy=pulumi.Output.from_input(policy).apply(json.dumps),
            opts=pulumi.ResourceOptions(parent=parent),
        ))
    for arn in managed_policy_arns or []:
        out.resources.append(aws.iam.RolePolicyAttachment(
            f"{name}-irsa-{arn.rsplit('/', 1)[1]}", role=role.name, policy_arn=arn,
            opts=pulumi.ResourceOptions(parent=parent),
        ))
    return out
