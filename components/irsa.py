"""IAM roles for Kubernetes service accounts (IRSA): one role per controller, trusted only by its account."""

from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws


def irsa_role(
    name: str,
    *,
    oidc_provider_arn: pulumi.Input[str],
    oidc_provider_url: pulumi.Input[str],
    namespace: str,
    service_account: str,
    policy: dict,
    parent: pulumi.Resource,
) -> aws.iam.Role:
    """A role assumable only by `system:serviceaccount:<namespace>:<service_account>`, with one inline policy."""

    def trust(args: list[str]) -> str:
        arn, url = args
        issuer = url.removeprefix("https://")
        return json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Federated": arn},
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

    role = aws.iam.Role(
        f"{name}-irsa",
        assume_role_policy=pulumi.Output.all(oidc_provider_arn, oidc_provider_url).apply(trust),
        description=f"IRSA role for {namespace}/{service_account}",
        opts=pulumi.ResourceOptions(parent=parent),
    )
    aws.iam.RolePolicy(
        f"{name}-irsa",
        role=role.id,
        policy=pulumi.Output.from_input(policy).apply(json.dumps),
        opts=pulumi.ResourceOptions(parent=role),
    )
    return role
