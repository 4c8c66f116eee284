"""The policy pack passes the real stacks and fails deliberately broken copies with a clear message."""

from __future__ import annotations

import copy
import json
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from .harness import unwrap_secrets

POLICY_DIR = Path(__file__).resolve().parents[2] / "policy"


@pytest.fixture(scope="module")
def policies():
    spec = importlib.util.spec_from_file_location("myelin_policies", POLICY_DIR / "myelin_policies.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["myelin_policies"] = module
    spec.loader.exec_module(module)
    return module


def resources(run):
    return [(r.typ, unwrap_secrets(copy.deepcopy(r.inputs))) for r in run.resources]


def violations(policies, items):
    """Run every policy through its pulumi_policy wrapper, as the engine would."""
    found = []
    for policy in policies.POLICIES:
        report = lambda message, urn=None, p=policy: found.append(f"{p.name}: {message}")  # noqa: E731
        if hasattr(policy, "validate") and policy.__class__.__name__ == "ResourceValidationPolicy":
            for typ, props in items:
                policy.validate(SimpleNamespace(resource_type=typ, props=props, urn="urn", name="n"), report)
        else:
            policy.validate(SimpleNamespace(resources=[SimpleNamespace(resource_type=t, props=p) for t, p in items]),
                            report)
    return found


def test_policy_pack_files_exist():
    assert (POLICY_DIR / "PulumiPolicy.yaml").is_file() and (POLICY_DIR / "__main__.py").is_file()


def test_real_stacks_pass_every_policy(policies, run):
    items = resources(run)
    covered = {t for t, _ in items} & set(policies.RESOURCE_RULES)
    assert covered == set(policies.RESOURCE_RULES), "every rule must have something to check in the stack"
    assert violations(policies, items) == []


def _break(items, typ, mutate, pick=lambda props: True):
    items = copy.deepcopy(items)
    for t, props in items:
        if t == typ and pick(props):
            mutate(props)
            return items
    raise AssertionError(f"no {typ} to break")


def _container(props):
    return props["spec"]["template"]["spec"]["containers"][0]


BROKEN = [
    ("root container", "kubernetes:apps/v1:Deployment",
     lambda p: (_container(p)["securityContext"].update(runAsNonRoot=False),
                p["spec"]["template"]["spec"]["securityContext"].update(runAsNonRoot=False)),
     "must run as non-root"),
    ("writable root FS", "kubernetes:apps/v1:Deployment",
     lambda p: _container(p)["securityContext"].update(readOnlyRootFilesystem=False), "read-only"),
    ("capabilities kept", "kubernetes:apps/v1:Deployment",
     lambda p: _container(p)["securityContext"]["capabilities"].update(drop=[]), "capabilities must be dropped"),
    ("privilege escalation", "kubernetes:apps/v1:Deployment",
     lambda p: _container(p)["securityContext"].pop("allowPrivilegeEscalation"), "allowPrivilegeEscalation"),
    ("no seccomp", "kubernetes:apps/v1:Deployment",
     lambda p: (_container(p)["securityContext"].pop("seccompProfile"),
                p["spec"]["template"]["spec"]["securityContext"].pop("seccompProfile")), "seccompProfile"),
    ("scratch volume pins its node", "kubernetes:apps/v1:Deployment",
     lambda p: p["spec"]["template"]["metadata"]["annotations"].pop(
         "cluster-autoscaler.kubernetes.io/safe-to-evict-local-volumes"), "would never remove a node"),
    ("token mounted", "kubernetes:apps/v1:Deployment",
     lambda p: p["spec"]["template"]["spec"].pop("automountServiceAccountToken"), "automountServiceAccountToken"),
    ("namespace without PSS", "kubernetes:core/v1:Namespace",
     lambda p: p["metadata"]["labels"].pop("pod-security.kubernetes.io/enforce"), "pod-security.kubernetes.io/enforce"),
    ("namespace baseline without reason", "kubernetes:core/v1:Namespace",
     lambda p: (p["metadata"]["labels"].update({"pod-security.kubernetes.io/enforce": "baseline"}),
                p["metadata"].pop("annotations", None)), "not 'restricted'"),
    ("IMDSv1", "aws:ec2/launchTemplate:LaunchTemplate",
     lambda p: p["metadataOptions"].update(httpTokens="optional"), "IMDSv2"),
    ("IMDS hop limit 2", "aws:ec2/launchTemplate:LaunchTemplate",
     lambda p: p["metadataOptions"].update(httpPutResponseHopLimit=2), "hop limit"),
    ("SSH key", "aws:ec2/launchTemplate:LaunchTemplate", lambda p: p.update(keyName="admin"), "SSH key"),
    ("unencrypted volume", "aws:ec2/launchTemplate:LaunchTemplate",
     lambda p: p["blockDeviceMappings"][0]["ebs"].update(encrypted="false"), "must be encrypted"),
    ("node group SSH", "aws:eks/nodeGroup:NodeGroup",
     lambda p: p.update(remoteAccess={"ec2SshKey": "admin"}), "remote (SSH) access"),
    ("public subnet IPs", "aws:ec2/subnet:Subnet", lambda p: p.update(mapPublicIpOnLaunch=True), "public IPs"),
    ("no KMS", "eks:index:Cluster", lambda p: p.pop("encryptionConfigKeyArn"), "KMS"),
    ("open endpoint", "eks:index:Cluster",
     lambda p: p.update(endpointPublicAccess=True, publicAccessCidrs=["0.0.0.0/0"]), "restricted to configured CIDRs"),
    ("public nodes", "eks:index:Cluster", lambda p: p.update(nodeAssociatePublicIpAddress=True), "public IPs"),
    ("mutable ECR tags", "aws:ecr/repository:Repository",
     lambda p: p.update(imageTagMutability="MUTABLE"), "immutable tags"),
    ("no ECR scan", "aws:ecr/repository:Repository",
     lambda p: p["imageScanningConfiguration"].update(scanOnPush=False), "scan images on push"),
    ("ingress exposes metrics", "kubernetes:networking.k8s.io/v1:Ingress",
     lambda p: p["spec"]["rules"][0]["http"]["paths"].append(
         {**p["spec"]["rules"][0]["http"]["paths"][0], "path": "/metrics"}), "health/metrics"),
    ("unencrypted queue", "aws:sqs/queue:Queue", lambda p: p.pop("sqsManagedSseEnabled"), "encrypted at rest"),
    ("bucket without default encryption", "aws:s3/bucketServerSideEncryptionConfiguration:"
     "BucketServerSideEncryptionConfiguration",
     lambda p: p["rules"][0]["applyServerSideEncryptionByDefault"].update(sseAlgorithm="none"), "default encryption"),
    ("ingress catch-all", "kubernetes:networking.k8s.io/v1:Ingress",
     lambda p: p["spec"]["rules"][0]["http"]["paths"][0].update(path="/", pathType="Prefix"), "health/metrics"),
    # The Open Inference Protocol's server routes are the load balancer's fixed responses, never an API's.
    ("OIP server route to an API", "kubernetes:networking.k8s.io/v1:Ingress",
     lambda p: p["spec"]["rules"][0]["http"]["paths"].append(
         {"path": "/v2/health/ready", "pathType": "Exact",
          "backend": {"service": {"name": "kmeans", "port": {"name": "http"}}}}), "the load balancer answers it"),
    ("all of /v2 to an API", "kubernetes:networking.k8s.io/v1:Ingress",
     lambda p: p["spec"]["rules"][0]["http"]["paths"].append(
         {"path": "/v2", "pathType": "Prefix", "backend": {"service": {"name": "kmeans", "port": {"name": "http"}}}}),
     "Open Inference Protocol's server route"),
    ("every OIP model to one API", "kubernetes:networking.k8s.io/v1:Ingress",
     lambda p: p["spec"]["rules"][0]["http"]["paths"].append(
         {"path": "/v2/models", "pathType": "Prefix",
          "backend": {"service": {"name": "kmeans", "port": {"name": "http"}}}}), "only at /v2/models/<its name>"),
]


@pytest.mark.parametrize("label, typ, mutate, message", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_copies_fail_with_a_clear_message(policies, dev, label, typ, mutate, message):
    found = violations(policies, _break(resources(dev), typ, mutate))
    assert found and any(message in v for v in found), found


def test_https_without_redirect_fails(policies, prod):
    found = violations(policies, _break(
        resources(prod), "kubernetes:networking.k8s.io/v1:Ingress",
        lambda p: p["metadata"]["annotations"].pop("alb.ingress.kubernetes.io/ssl-redirect")))
    assert any("redirect to HTTPS" in v for v in found)


def test_api_key_as_environment_variable_fails(policies, prod):
    def env_secret(p):
        _container(p).setdefault("env", []).append(
            {"name": "KEYS", "valueFrom": {"secretKeyRef": {"name": "x-api-keys", "key": "keys"}}})

    found = violations(policies, _break(resources(prod), "kubernetes:apps/v1:Deployment", env_secret))
    assert any("mounted as a file" in v for v in found), found


def test_admitting_node_subnets_fails(policies, prod):
    """The old internal-API policy admitted every private subnet, i.e. every node and pod."""
    items = resources(prod)
    node_cidr = next(p["cidrBlock"] for t, p in items if t == "aws:ec2/subnet:Subnet"
                     and not any(tag in p["tags"] for tag in ("kubernetes.io/role/elb", "kubernetes.io/role/internal-elb")))
    broken = _break(items, "kubernetes:networking.k8s.io/v1:NetworkPolicy",
                    lambda p: p["spec"]["ingress"][0]["from"].append({"ipBlock": {"cidr": node_cidr}}),
                    pick=lambda p: p["metadata"]["name"] == "image-classifier")
    found = violations(policies, broken)
    assert any("overlaps the subnets nodes and pods live in" in v for v in found), found


def test_no_default_deny_egress_fails(policies, dev):
    broken = _break(resources(dev), "kubernetes:networking.k8s.io/v1:NetworkPolicy",
                    lambda p: p["spec"].update(policyTypes=["Ingress"]), pick=lambda p: p["metadata"]["name"] == "default-deny")
    assert any("default-deny egress" in v for v in violations(policies, broken))


def test_missing_network_policies_fail(policies, dev):
    items = [(t, p) for t, p in resources(dev) if t != "kubernetes:networking.k8s.io/v1:NetworkPolicy"]
    found = violations(policies, items)
    assert any("default-deny" in v for v in found) and any("no NetworkPolicy admits" in v for v in found)


SSE_CONFIG = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"


def test_bucket_without_encryption_configuration_fails(policies, dev):
    items = [(t, p) for t, p in resources(dev) if t != SSE_CONFIG]
    assert any("default encryption configurations" in v for v in violations(policies, items))


def _async_role_policy(role):
    """A predicate picking the AsyncAPI's gateway or worker role policy."""
    return lambda props: isinstance(props.get("policy"), str) and f'"Sid": "JobObjects"' in props["policy"] and (
        ("sqs:ReceiveMessage" in props["policy"]) == (role == "worker"))


def _edit_statements(edit):
    def mutate(props):
        doc = json.loads(props["policy"])
        for st in doc["Statement"]:
            edit(st)
        props["policy"] = json.dumps(doc)
    return mutate


@pytest.mark.parametrize("role", ["gateway", "worker"])
@pytest.mark.parametrize("label, edit, message", [
    ("sqs:*", lambda st: st.update(Action="sqs:*") if st["Sid"] == "ReadQueues" else None, "allows"),
    ("s3:*", lambda st: st.update(Action=["s3:*"]) if st["Sid"] == "JobObjects" else None, "allows"),
    ("*", lambda st: st.update(Action="*") if st["Sid"] == "Bucket" else None, "allows"),
    ("Resource *", lambda st: st.update(Resource="*") if st["Sid"] == "ReadQueues" else None, "on *"),
    ("every queue", lambda st: st.update(Resource="arn:aws:sqs:us-west-2:123456789012:*")
     if st["Sid"] == "ReadQueues" else None, "name the API's own"),
    ("every bucket", lambda st: st.update(Resource="arn:aws:s3:::*") if st["Sid"] == "Bucket" else None,
     "name the API's own"),
])
def test_wildcarded_asyncapi_role_fails(policies, dev, role, label, edit, message):
    items = resources(dev)
    assert violations(policies, items) == []
    found = violations(policies, _break(items, "aws:iam/rolePolicy:RolePolicy", _edit_statements(edit),
                                        pick=_async_role_policy(role)))
    assert any(v.startswith("iam-no-wildcards") and message in v for v in found), found
