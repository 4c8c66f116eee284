"""One mocks class for the whole program: records every resource and invoke, returns plausible outputs.

`eks:index:*` are remote components: under mocks they have no children, so the outputs the program
reads (kubeconfig, OIDC provider) are canned here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import pulumi

ACCOUNT = "123456789012"


@dataclass
class Recorded:
    typ: str
    name: str
    inputs: dict[str, Any]
    outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.inputs.get("kind", "")


def _fake_id(typ: str, name: str) -> str:
    return hashlib.sha1(f"{typ}/{name}".encode()).hexdigest()[:17]


KUBECONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [{"name": "mock", "cluster": {"server": "https://MOCK.gr7.us-west-2.eks.amazonaws.com",
                                               "certificate-authority-data": "bW9jaw=="}}],
    "contexts": [{"name": "mock", "context": {"cluster": "mock", "user": "aws"}}],
    "current-context": "mock",
    "users": [{"name": "aws", "user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1",
                                                 "command": "aws", "args": ["eks", "get-token"]}}}],
}


class MyelinMocks(pulumi.runtime.Mocks):
    def __init__(self, region: str = "us-west-2") -> None:
        self.region = region
        self.resources: list[Recorded] = []
        self.calls: list[tuple[str, dict]] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        inputs = dict(args.inputs)
        rid = _fake_id(args.typ, args.name)
        out: dict[str, Any] = dict(inputs)
        service = args.typ.split(":")[1].split("/")[0] if args.typ.count(":") >= 2 else ""
        out.setdefault("arn", f"arn:aws:{service}:{self.region}:{ACCOUNT}:{args.name}")
        t = args.typ
        if t == "eks:index:Cluster":
            issuer = f"oidc.eks.{self.region}.amazonaws.com/id/MOCKOIDC"
            out.update(
                kubeconfig=KUBECONFIG,
                kubeconfigJson=json.dumps(KUBECONFIG),
                oidcProviderArn=f"arn:aws:iam::{ACCOUNT}:oidc-provider/{issuer}",
                oidcProviderUrl=f"https://{issuer}",
                oidcIssuer=issuer,
                clusterSecurityGroupId="sg-cluster0001",
                nodeSecurityGroupId="sg-nodes0001",
            )
        elif t == "aws:ec2/vpc:Vpc":
            rid = "vpc-0abc" + rid[:8]
        elif t == "aws:ec2/subnet:Subnet":
            rid = "subnet-" + rid
        elif t == "aws:ec2/launchTemplate:LaunchTemplate":
            rid = "lt-" + rid
            out.update(latestVersion=1, defaultVersion=1)
        elif t == "aws:eks/nodeGroup:NodeGroup":
            # EKS names the group's Auto Scaling group itself (eks-<group>-<uuid>).
            out["resources"] = [{"autoscalingGroups": [{"name": f"eks-{args.name}-{rid[:8]}"}]}]
        elif t == "aws:ecr/repository:Repository":
            out.update(
                name=args.name,
                registryId=ACCOUNT,
                repositoryUrl=f"{ACCOUNT}.dkr.ecr.{self.region}.amazonaws.com/{args.name}",
            )
        elif t == "docker-build:index:Image":
            out.update(digest="sha256:" + hashlib.sha256(args.name.encode()).hexdigest())
        elif t == "aws:cloudwatch/logGroup:LogGroup":
            out["arn"] = f"arn:aws:logs:{self.region}:{ACCOUNT}:log-group:{inputs.get('name', args.name)}"
        elif t == "aws:iam/role:Role":
            out["arn"] = f"arn:aws:iam::{ACCOUNT}:role/{args.name}"
            out.setdefault("name", args.name)
        elif t == "aws:kms/key:Key":
            out["arn"] = f"arn:aws:kms:{self.region}:{ACCOUNT}:key/{rid}"
        elif t == "aws:sqs/queue:Queue":
            # SQS names the queue `<name>-<random>` and its id is the queue URL.
            qname = inputs.get("name") or f"{args.name}-{rid[:7]}"
            out.update(name=qname, arn=f"arn:aws:sqs:{self.region}:{ACCOUNT}:{qname}",
                       url=f"https://sqs.{self.region}.amazonaws.com/{ACCOUNT}/{qname}")
            rid = out["url"]
        elif t == "aws:s3/bucket:Bucket":
            bucket = inputs.get("bucket") or f"{inputs.get('bucketPrefix') or args.name + '-'}{rid[:12]}"
            out.update(bucket=bucket, arn=f"arn:aws:s3:::{bucket}")
            rid = bucket
        elif t == "random:index/randomPassword:RandomPassword":
            out["result"] = "generated-" + rid
        elif t == "kubernetes:networking.k8s.io/v1:Ingress":
            scheme = inputs.get("metadata", {}).get("annotations", {}).get("alb.ingress.kubernetes.io/scheme", "")
            prefix = "internal-" if scheme == "internal" else ""
            out["status"] = {"loadBalancer": {"ingress": [
                {"hostname": f"{prefix}k8s-myelin-{rid[:8]}.{self.region}.elb.amazonaws.com"}]}}
        self.resources.append(Recorded(args.typ, args.name, inputs, out))
        return rid, out

    def call(self, args: pulumi.runtime.MockCallArgs):
        self.calls.append((args.token, dict(args.args)))
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            names = [f"{self.region}{z}" for z in "abcdef"]
            return {"names": names, "zoneIds": [f"usw2-az{i}" for i in range(6)], "id": self.region}
        if args.token == "aws:ecr/getAuthorizationToken:getAuthorizationToken":
            return {"userName": "AWS", "password": "mock-ecr-password",
                    "proxyEndpoint": f"https://{ACCOUNT}.dkr.ecr.{self.region}.amazonaws.com",
                    "authorizationToken": "bW9jaw==", "expiresAt": "2030-01-01T00:00:00Z", "id": self.region}
        return {}
