"""AWS Load Balancer Controller: one ALB per stack and visibility, from the APIs' Ingresses (target type ip).

Its mutating webhook for Services is switched off (`enableServiceMutatorWebhook: false`): chart 1.14 installs it
for every Service with `failurePolicy: Fail`, so any release creating a Service while the controller starts
fails ("no endpoints available for service aws-load-balancer-webhook-service", aws-load-balancer-controller
#4140, eks-charts #1058). Myelin uses no Service of type LoadBalancer. The pod webhook that injects ALB
readiness gates stays: it only sees namespaces labelled `elbv2.k8s.aws/pod-readiness-gate-inject: enabled`
(the APIs' namespace), whose pods are created after this release.
"""

from __future__ import annotations

import pulumi

from .. import versions
from ..cluster import SYSTEM_NODE_SELECTOR
from .base import AddonContext

SERVICE_ACCOUNT = "aws-load-balancer-controller"
READINESS_GATE_LABEL = "elbv2.k8s.aws/pod-readiness-gate-inject"


class LoadBalancerController:
    def __init__(self, ctx: AddonContext, vpc_id: pulumi.Input[str]):
        # Statements follow the controller's docs/install/iam_policy.json (v2.14), less WAF, Shield and Cognito
        # (disabled below / not used): every create must carry the cluster tag, every change needs it on the resource.
        cluster_tag = "aws:ResourceTag/elbv2.k8s.aws/cluster"
        request_tag = "aws:RequestTag/elbv2.k8s.aws/cluster"
        elb_arns = [
            "arn:aws:elasticloadbalancing:*:*:targetgroup/*/*",
            "arn:aws:elasticloadbalancing:*:*:loadbalancer/app/*/*",
            "arn:aws:elasticloadbalancing:*:*:loadbalancer/net/*/*",
        ]
        policy = {
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
        }
        self.role = ctx.irsa("aws-load-balancer-controller", "kube-system", SERVICE_ACCOUNT, policy)
        self.release = ctx.release(
            "aws-load-balancer-controller",
            versions.AWS_LOAD_BALANCER_CONTROLLER,
            "kube-system",
            {
                "clusterName": ctx.cluster.cluster_name,
                # Explicit region and VPC: the controller cannot (and need not) read them from IMDS.
                "region": ctx.config.region,
                "vpcId": vpc_id,
                "replicaCount": 2,
                "serviceAccount": {"create": True, "name": SERVICE_ACCOUNT,
                                   "annotations": {"eks.amazonaws.com/role-arn": self.role.arn}},
                "enableServiceMutatorWebhook": False,
                "enableShield": False,
                "enableWaf": False,
                "enableWafv2": False,
                "nodeSelector": SYSTEM_NODE_SELECTOR,
            },
            # Created after its permissions and, on destroy, removed before them: it must still be able to
            # delete the load balancers of the Ingresses that are deleted before it.
            depends_on=self.role.resources,
        )
