"""Myelin's security rules as plain functions over (resource type, properties), wrapped as Pulumi policies.

Plain functions so tests run them without the engine: on the resources recorded from the mocked dev
and prod stacks (they pass) and on broken copies (they fail with the message below). Properties are
the engine's camelCase inputs; unknown values (None during a preview) are not judged.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlsplit

from pulumi_policy import (
    EnforcementLevel,
    ResourceValidationPolicy,
    StackValidationPolicy,
)

Props = Mapping[str, Any]
RESERVED_PATHS = ("/healthz", "/readyz", "/metrics", "/info", "/docs", "/openapi.json", "/docs-assets")
#: The Open Inference Protocol's server routes: answered by the load balancer itself (fixed responses of the
#: `myelin-oip-server-<visibility>` Ingress), never routed to an API. Under /v2 an API gets only
#: /v2/models/<its name> (networking.protocols: [oip]).
OIP_SERVER_PATHS = ("/v2", "/v2/health/live", "/v2/health/ready")
OIP_MODELS = "/v2/models/"
ALB = "alb.ingress.kubernetes.io/"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
#: A RealtimeAPI released as a canary runs under an Argo Rollout: the same pod template, the same rules.
ROLLOUT = "kubernetes:argoproj.io/v1alpha1:Rollout"
WORKLOADS = (DEPLOYMENT, ROLLOUT)
ANALYSIS_TEMPLATE = "kubernetes:argoproj.io/v1alpha1:AnalysisTemplate"
#: The metrics a canary analysis may read: Myelin's own, as its pods export them (myelin/contract.py; the tests
#: compare this list with it). Traffic policy lives at the edge, its evidence in the API's own metrics.
ANALYSIS_METRICS = ("myelin_requests_total", "myelin_request_duration_seconds_bucket")


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, Mapping):
            return None
        d = d.get(key)
    return d


# -- AWS ------------------------------------------------------------------------------------------


def ecr_repository(props: Props) -> list[str]:
    out = []
    if props.get("imageTagMutability") != "IMMUTABLE":
        out.append("ECR repository must use immutable tags (imageTagMutability: IMMUTABLE)")
    if _get(props, "imageScanningConfiguration", "scanOnPush") is not True:
        out.append("ECR repository must scan images on push (imageScanningConfiguration.scanOnPush: true)")
    return out


def launch_template(props: Props) -> list[str]:
    out = []
    md = props.get("metadataOptions") or {}
    if md.get("httpTokens") != "required":
        out.append("launch template must require IMDSv2 (metadataOptions.httpTokens: required)")
    if md.get("httpPutResponseHopLimit") != 1:
        out.append("launch template must set the IMDS hop limit to 1 so pods cannot reach node credentials")
    if props.get("keyName"):
        out.append("launch template must not set an SSH key (keyName): nodes have no SSH")
    for bd in props.get("blockDeviceMappings") or []:
        if str(_get(bd, "ebs", "encrypted")).lower() != "true":
            out.append(f"launch template volume {bd.get('deviceName')} must be encrypted")
    if not props.get("blockDeviceMappings"):
        out.append("launch template must declare its (encrypted) root volume")
    return out


def node_group(props: Props) -> list[str]:
    out = []
    if props.get("remoteAccess"):
        out.append("node group must not enable remote (SSH) access")
    if not props.get("launchTemplate"):
        out.append("node group must use a launch template (IMDSv2, encrypted volumes)")
    return out


def subnet(props: Props) -> list[str]:
    if props.get("mapPublicIpOnLaunch") is True:
        return ["subnet must not give instances public IPs (nodes live in private subnets only)"]
    return []


def eks_cluster(props: Props) -> list[str]:
    out = []
    if "encryptionConfigKeyArn" not in props:
        out.append("EKS cluster must encrypt Kubernetes secrets with KMS (encryptionConfigKeyArn)")
    if props.get("authenticationMode") not in ("API", None):
        out.append("EKS cluster must use API authentication mode (access entries, not aws-auth)")
    if not props.get("enabledClusterLogTypes"):
        out.append("EKS cluster must ship control-plane logs (enabledClusterLogTypes)")
    if props.get("skipDefaultNodeGroup") is not True:
        out.append("EKS cluster must skip the default (self-managed, unhardened) node group")
    if props.get("nodeAssociatePublicIpAddress") is not False:
        out.append("EKS nodes must not get public IPs (nodeAssociatePublicIpAddress: false)")
    if props.get("endpointPublicAccess") is not False:
        cidrs = props.get("publicAccessCidrs") or []
        if not cidrs or any(ipaddress.ip_network(c).prefixlen == 0 for c in cidrs if isinstance(c, str)):
            out.append("EKS API endpoint must be private or restricted to configured CIDRs (publicAccessCidrs)")
    return out


def sqs_queue(props: Props) -> list[str]:
    if props.get("sqsManagedSseEnabled") is True or props.get("kmsMasterKeyId"):
        return []
    return ["SQS queue must be encrypted at rest (sqsManagedSseEnabled: true, or kmsMasterKeyId)"]


S3_ENCRYPTION = ("AES256", "aws:kms", "aws:kms:dsse")


def bucket_encryption(props: Props) -> list[str]:
    algorithms = [_get(r, "applyServerSideEncryptionByDefault", "sseAlgorithm") for r in props.get("rules") or []]
    if not algorithms or any(a not in S3_ENCRYPTION for a in algorithms if a is not None):
        return [f"S3 bucket default encryption must be one of {', '.join(S3_ENCRYPTION)}"]
    return []


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def role_policy(props: Props) -> list[str]:
    """No IAM statement allows every action, or every SQS or S3 action; SQS and S3 actions name their queues and
    buckets (an AsyncAPI's role: its own queue, dead-letter queue and bucket)."""
    raw = props.get("policy")
    if not isinstance(raw, str):
        return []  # unknown during a preview
    doc = json.loads(raw)
    out = []
    for st in _list(doc.get("Statement") or []):
        if st.get("Effect") != "Allow":
            continue
        sid = st.get("Sid") or "a statement"
        actions = [a for a in _list(st.get("Action") or []) if isinstance(a, str)]
        if st.get("NotAction") or any(a == "*" or a.lower() in ("sqs:*", "s3:*") for a in actions):
            out.append(f"IAM policy {sid}: allows {actions or 'NotAction'}; list the actions the workload calls")
        data = [a for a in actions if a.lower().startswith(("sqs:", "s3:"))]
        if not data:
            continue
        for res in _list(st.get("Resource") or []):
            if not isinstance(res, str):
                continue
            name = res.split(":")[-1] if res.startswith("arn:") else res
            if res == "*" or st.get("NotResource") or (res.startswith("arn:aws") and "*" in name.split("/")[0]):
                out.append(f"IAM policy {sid}: {', '.join(data)} on {res}; name the API's own queues and bucket")
    return out


# -- Kubernetes -----------------------------------------------------------------------------------


#: cluster-autoscaler keeps a node whose pod has local storage not named here (FAQ, cluster-autoscaler-1.34.1).
SAFE_TO_EVICT_LOCAL_VOLUMES = "cluster-autoscaler.kubernetes.io/safe-to-evict-local-volumes"


def deployment(props: Props) -> list[str]:
    """The pods of a Deployment (or of a canary's Rollout, whose messages name it so)."""
    pod = _get(props, "spec", "template", "spec") or {}
    name = _get(props, "metadata", "name")
    if props.get("kind") == "Rollout":
        name = f"{name} (Rollout)"
    out = []
    named = str((_get(props, "spec", "template", "metadata", "annotations") or {}).get(SAFE_TO_EVICT_LOCAL_VOLUMES) or "")
    for volume in pod.get("volumes") or []:
        local = "hostPath" in volume or ("emptyDir" in volume and _get(volume, "emptyDir", "medium") != "Memory")
        if local and volume.get("name") not in named.split(","):
            out.append(f"Deployment {name}: volume {volume.get('name')} is local storage not named in "
                       f"{SAFE_TO_EVICT_LOCAL_VOLUMES}: the cluster autoscaler would never remove a node it runs on")
    psc = pod.get("securityContext") or {}
    if pod.get("automountServiceAccountToken") is not False:
        out.append(f"Deployment {name}: automountServiceAccountToken must be false")
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        out.append(f"Deployment {name}: host namespaces are not allowed")
    for c in (pod.get("containers") or []) + (pod.get("initContainers") or []):
        sc = c.get("securityContext") or {}
        cname = f"Deployment {name} container {c.get('name')}"
        if not (sc.get("runAsNonRoot") is True or psc.get("runAsNonRoot") is True):
            out.append(f"{cname}: must run as non-root (runAsNonRoot: true)")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            out.append(f"{cname}: must not run as UID 0")
        if sc.get("readOnlyRootFilesystem") is not True:
            out.append(f"{cname}: root file system must be read-only")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{cname}: allowPrivilegeEscalation must be false")
        if sc.get("privileged"):
            out.append(f"{cname}: privileged containers are not allowed")
        if "ALL" not in (_get(sc, "capabilities", "drop") or []):
            out.append(f"{cname}: all capabilities must be dropped (capabilities.drop: [ALL])")
        if (_get(sc, "capabilities", "add") or []):
            out.append(f"{cname}: no capabilities may be added")
        seccomp = _get(sc, "seccompProfile", "type") or _get(psc, "seccompProfile", "type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{cname}: seccompProfile must be RuntimeDefault")
        for env in c.get("env") or []:
            if _get(env, "valueFrom", "secretKeyRef"):
                out.append(f"{cname}: secret {env.get('name')} must be mounted as a file, not an environment "
                           "variable (subprocesses inherit the environment)")
    return out


def namespace(props: Props) -> list[str]:
    labels = _get(props, "metadata", "labels") or {}
    annotations = _get(props, "metadata", "annotations") or {}
    name = _get(props, "metadata", "name")
    level = labels.get("pod-security.kubernetes.io/enforce")
    if level is None:
        return [f"Namespace {name}: must carry the label pod-security.kubernetes.io/enforce"]
    if level != "restricted" and not annotations.get("myelin.dev/pss-exception"):
        return [f"Namespace {name}: enforces '{level}', not 'restricted', without a myelin.dev/pss-exception reason"]
    return []


def ingress(props: Props) -> list[str]:
    out = []
    name = _get(props, "metadata", "name")
    ann = _get(props, "metadata", "annotations") or {}
    for rule in _get(props, "spec", "rules") or []:
        for p in _get(rule, "http", "paths") or []:
            path = p.get("path") or "/"
            if path == "/" or path in RESERVED_PATHS or (
                p.get("pathType") == "Prefix" and any(r.startswith(path.rstrip("/") + "/") for r in RESERVED_PATHS)
            ):
                out.append(f"Ingress {name}: path {path} would expose health/metrics routes; route only API endpoints")
            out.extend(_oip_path(name, path, p, ann))
    if _get(props, "spec", "defaultBackend"):
        out.append(f"Ingress {name}: a default backend exposes every path")
    if ann.get(ALB + "certificate-arn"):
        if ann.get(ALB + "ssl-redirect") != "443":
            out.append(f"Ingress {name}: with a certificate, HTTP must redirect to HTTPS (ssl-redirect: '443')")
        if "HTTPS" not in (ann.get(ALB + "listen-ports") or ""):
            out.append(f"Ingress {name}: with a certificate, the load balancer must listen on HTTPS")
    return out


def _oip_path(name: Any, path: str, p: Props, ann: Mapping[str, Any]) -> list[str]:
    """Under /v2: the server routes only as the load balancer's fixed responses; an API only at /v2/models/<name>."""
    prefix = p.get("pathType") == "Prefix"
    server = path in OIP_SERVER_PATHS or path.startswith("/v2/health/") or (
        prefix and any(r.startswith(path.rstrip("/") + "/") or r == path.rstrip("/") for r in OIP_SERVER_PATHS))
    if server:
        action = _get(p, "backend", "service", "name")
        port = _get(p, "backend", "service", "port", "name")
        try:
            fixed = json.loads(ann.get(ALB + f"actions.{action}") or "{}").get("type") == "fixed-response"
        except (TypeError, ValueError, AttributeError):
            fixed = False
        if port != "use-annotation" or not fixed or prefix:
            return [f"Ingress {name}: path {path} is the Open Inference Protocol's server route (/v2, /v2/health/*): "
                    "the load balancer answers it (a fixed-response action), never an API"]
        return []
    if path == "/v2" or path.startswith("/v2/"):
        rest = path[len(OIP_MODELS):] if path.startswith(OIP_MODELS) else ""
        if not rest or "/" in rest.rstrip("/"):
            return [f"Ingress {name}: path {path}: under /v2 an API is routed only at /v2/models/<its name>"]
    return []


# -- whole stack ----------------------------------------------------------------------------------


LB_ROLE_TAGS = ("kubernetes.io/role/elb", "kubernetes.io/role/internal-elb")


def buckets_encrypted(resources: Iterable[tuple[str, Props]]) -> list[str]:
    """Every S3 bucket has a default encryption configuration (counted: bucket names are unknown in a preview)."""
    items = list(resources)
    buckets = sum(1 for typ, _ in items if typ == "aws:s3/bucket:Bucket")
    configs = sum(1 for typ, _ in items
                  if typ == "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")
    if configs < buckets:
        return [f"{buckets} S3 buckets but {configs} default encryption configurations: encrypt every bucket"]
    return []


def network_policies(resources: Iterable[tuple[str, Props]]) -> list[str]:
    """Every namespace with Deployments denies ingress and egress by default; every Deployment has its own policy,
    which admits addresses only from load balancer subnets (never from the subnets nodes and pods live in)."""
    deployments, policies, node_subnets = [], [], []
    for typ, props in resources:
        if typ in WORKLOADS:
            deployments.append(props)
        elif typ == "kubernetes:networking.k8s.io/v1:NetworkPolicy":
            policies.append(props)
        elif typ == "aws:ec2/subnet:Subnet" and isinstance(props.get("cidrBlock"), str):
            if not any(tag in (props.get("tags") or {}) for tag in LB_ROLE_TAGS):
                node_subnets.append(ipaddress.ip_network(props["cidrBlock"]))
    out = []
    for dep in deployments:
        ns = _get(dep, "metadata", "namespace")
        name = _get(dep, "metadata", "name")
        in_ns = [p for p in policies if _get(p, "metadata", "namespace") == ns]
        for direction, rules in (("Ingress", "ingress"), ("Egress", "egress")):
            if not any(_get(p, "spec", "podSelector") in ({}, None)
                       and direction in (_get(p, "spec", "policyTypes") or []) and not _get(p, "spec", rules)
                       for p in in_ns):
                out.append(f"namespace {ns}: needs a default-deny {rules} NetworkPolicy (Deployment {name} lives there)")
        labels = _get(dep, "spec", "selector", "matchLabels") or {}
        own = [p for p in in_ns if _get(p, "spec", "podSelector", "matchLabels")
               and (_get(p, "spec", "podSelector", "matchLabels") or {}).items() <= labels.items()]
        if not own:
            out.append(f"Deployment {ns}/{name}: no NetworkPolicy admits its traffic")
        for pol in own:
            for rule in _get(pol, "spec", "ingress") or []:
                for peer in rule.get("from") or [{}]:
                    cidr = _get(peer, "ipBlock", "cidr")
                    if not peer:
                        out.append(f"Deployment {ns}/{name}: a NetworkPolicy rule admits every source")
                    elif isinstance(cidr, str) and any(ipaddress.ip_network(cidr).overlaps(n) for n in node_subnets):
                        out.append(f"Deployment {ns}/{name}: NetworkPolicy admits {cidr}, which overlaps the subnets "
                                   "nodes and pods live in (admit load balancer subnets only)")
    return out


#: The inline policy of an API's own IAM role is named this + the API's name (components/apis/model.py).
MODEL_POLICY_PREFIX = "myelin-model-"
SPEC_ENV = "MYELIN_API_SPEC"
#: What reading a model takes (myelin.spec.S3Scope): objects, their versions, and listing the prefix.
MODEL_OBJECT_ACTIONS = {"s3:getobject", "s3:getobjectversion"}
MODEL_LIST_ACTION = "s3:listbucket"
#: A model under a customer-managed KMS key (myelin:apis.<folder>.model_kms_key_arn): decrypt, nothing else.
MODEL_KMS_ACTION = "kms:decrypt"
_S3_ARN = re.compile(r"^arn:[a-z-]+:s3:::([^/]+)(?:/(.*))?$")
_KMS_KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:([a-z0-9-]+):\d{12}:key/[A-Za-z0-9-]+$")


def _model_kms_statement(where: str, model_uri: str, bucket: str, prefix: str, st: Mapping) -> list[str]:
    """kms:Decrypt on named keys (no wildcard, no alias), only through S3 in the key's region (kms:ViaService), and
    only for the model's objects or its bucket (kms:EncryptionContext:aws:s3:arn, the object's ARN, or the bucket's
    with an S3 Bucket Key)."""
    out = []
    actions = [str(a).lower() for a in _list(st.get("Action") or [])]
    if any(a != MODEL_KMS_ACTION for a in actions):
        out.append(f"{where}: a statement with kms:Decrypt allows {st.get('Action')}; only kms:Decrypt reads a model")
    cond = _get(st, "Condition") or {}
    for key in _list(st.get("Resource") or []):
        m = _KMS_KEY_ARN.match(str(key))
        if m is None:
            out.append(f"{where}: kms:Decrypt on {key}; name the model's key by its key ARN (no wildcard, no alias)")
            continue
        via = _get(cond, "StringEquals", "kms:ViaService")
        if via != f"s3.{m.group(1)}.amazonaws.com":
            out.append(f"{where}: kms:Decrypt on {key} without kms:ViaService s3.{m.group(1)}.amazonaws.com: the key "
                       "would decrypt anything, not only what S3 serves")
    contexts = _get(cond, "StringLike", "kms:EncryptionContext:aws:s3:arn") or _get(
        cond, "StringEquals", "kms:EncryptionContext:aws:s3:arn")
    if not contexts:
        out.append(f"{where}: kms:Decrypt without a kms:EncryptionContext:aws:s3:arn condition decrypts objects "
                   f"beyond {model_uri}")
    for ctx in _list(contexts or []):
        m = _S3_ARN.match(str(ctx))
        if m is None or m.group(1) != bucket or (m.group(2) is not None and not _within(m.group(2), prefix)):
            out.append(f"{where}: kms:Decrypt for {ctx} reaches beyond the model {model_uri}")
    return out


def _model_uris(resources: Iterable[tuple[str, Props]]) -> dict[str, str | None]:
    """Deployment name -> its predictor.model_uri, from the api.yaml the pods get (None: no model_uri)."""
    out: dict[str, str | None] = {}
    for typ, props in resources:
        if typ not in WORKLOADS:
            continue
        for c in _get(props, "spec", "template", "spec", "containers") or []:
            for env in c.get("env") or []:
                if env.get("name") == SPEC_ENV and isinstance(env.get("value"), str):
                    try:
                        spec = json.loads(env["value"])
                    except ValueError:
                        continue
                    out[str(_get(props, "metadata", "name"))] = _get(spec, "predictor", "model_uri")
    return out


def _within(pattern: str, prefix: str) -> bool:
    """Every key the IAM pattern can match lies in the model: under `prefix` ('' = whole bucket, 'x/' = the prefix
    x/), or for a prefix without a trailing slash (one object or a folder), that key or anything under `prefix/`."""
    literal = re.split(r"[*?]", pattern, maxsplit=1)[0]
    wild = literal != pattern
    if prefix == "" or prefix.endswith("/"):
        return literal.startswith(prefix)
    return (not wild and pattern == prefix) or literal.startswith(prefix + "/")


def model_role_policy(api: str, model_uri: str | None, document: Any) -> list[str]:
    """An API's role may read its model and nothing else: s3:GetObject(Version) on keys within its prefix,
    s3:ListBucket on its bucket limited (s3:prefix) to that prefix, and for a model under a customer-managed key
    kms:Decrypt on that key through S3 for those objects only."""
    where = f"IAM policy {MODEL_POLICY_PREFIX}{api}"
    if not isinstance(model_uri, str) or not model_uri.startswith("s3://"):
        return [f"{where}: grants S3 reads, but API {api} has no s3:// predictor.model_uri"]
    parts = urlsplit(model_uri)
    bucket, prefix = parts.netloc, parts.path.lstrip("/")
    out = []
    statements = _get(document, "Statement") if isinstance(document, Mapping) else None
    if isinstance(statements, Mapping):
        statements = [statements]
    for st in statements or []:
        if not isinstance(st, Mapping) or st.get("Effect") != "Allow":
            continue
        if "NotAction" in st or "NotResource" in st:
            out.append(f"{where}: NotAction/NotResource grants everything else; list what {model_uri} needs")
            continue
        actions = st.get("Action") or []
        actions = [actions] if isinstance(actions, str) else list(actions)
        resources = st.get("Resource") or []
        resources = [resources] if isinstance(resources, str) else list(resources)
        if any(str(a).lower() == MODEL_KMS_ACTION for a in actions):
            out.extend(_model_kms_statement(where, model_uri, bucket, prefix, st))
            continue
        for action in actions:
            a = str(action).lower()
            if a not in MODEL_OBJECT_ACTIONS and a != MODEL_LIST_ACTION:
                out.append(f"{where}: action {action} is more than reading the model {model_uri} "
                           "(s3:GetObject, s3:GetObjectVersion, s3:ListBucket)")
                continue
            for resource in resources:
                m = _S3_ARN.match(str(resource))
                if m is None or m.group(1) != bucket:
                    out.append(f"{where}: {action} on {resource} reads beyond the model's bucket {bucket}")
                elif a == MODEL_LIST_ACTION:
                    if m.group(2) is not None:
                        out.append(f"{where}: s3:ListBucket applies to the bucket ARN, not {resource}")
                        continue
                    cond = _get(st, "Condition") or {}
                    values = (_get(cond, "StringLike", "s3:prefix") or _get(cond, "StringEquals", "s3:prefix"))
                    values = [values] if isinstance(values, str) else list(values or [])
                    if not values:
                        out.append(f"{where}: s3:ListBucket on {resource} without an s3:prefix condition lists the "
                                   f"whole bucket, beyond {model_uri}")
                    for v in values:
                        if not _within(str(v), prefix):
                            out.append(f"{where}: s3:ListBucket s3:prefix {v} reaches beyond the model {model_uri}")
                elif m.group(2) is None or not _within(m.group(2), prefix):
                    out.append(f"{where}: {action} on {resource} reads beyond the model {model_uri}")
    return out


def model_roles(resources: Iterable[tuple[str, Props]]) -> list[str]:
    """Each API's role (its inline policy `myelin-model-<api>`) reads exactly its model_uri's prefix."""
    resources = list(resources)
    uris = _model_uris(resources)
    out = []
    for typ, props in resources:
        name = props.get("name")
        if typ != "aws:iam/rolePolicy:RolePolicy" or not isinstance(name, str) or not name.startswith(MODEL_POLICY_PREFIX):
            continue
        policy = props.get("policy")
        if not isinstance(policy, str):
            continue  # unknown during a preview
        try:
            document = json.loads(policy)
        except ValueError:
            out.append(f"IAM policy {name}: not JSON")
            continue
        out.extend(model_role_policy(name[len(MODEL_POLICY_PREFIX):], uris.get(name[len(MODEL_POLICY_PREFIX):]), document))
    return out


_METRIC_NAME = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]")


def analysis_template(props: Props) -> list[str]:
    """A canary's analysis reads only Myelin's own metrics (ANALYSIS_METRICS) from the stack's Prometheus."""
    out = []
    name = _get(props, "metadata", "name")
    for metric in _get(props, "spec", "metrics") or []:
        provider = metric.get("provider") or {}
        prom = provider.get("prometheus")
        if set(provider) - {"prometheus"} or prom is None:
            out.append(f"AnalysisTemplate {name} metric {metric.get('name')}: only the stack's Prometheus may judge "
                       f"a canary (provider: {sorted(provider)})")
            continue
        query = prom.get("query")
        if not isinstance(query, str):
            continue  # unknown during a preview
        read = set(_METRIC_NAME.findall(query)) - {"by", "on", "without", "ignoring"}
        others = sorted(read - set(ANALYSIS_METRICS))
        if others:
            out.append(f"AnalysisTemplate {name} metric {metric.get('name')}: reads {', '.join(others)}; a canary "
                       f"is judged on Myelin's own metrics only ({', '.join(ANALYSIS_METRICS)})")
    return out


RESOURCE_RULES: dict[str, Callable[[Props], list[str]]] = {
    "aws:ecr/repository:Repository": ecr_repository,
    "aws:ec2/launchTemplate:LaunchTemplate": launch_template,
    "aws:eks/nodeGroup:NodeGroup": node_group,
    "aws:ec2/subnet:Subnet": subnet,
    "eks:index:Cluster": eks_cluster,
    "kubernetes:apps/v1:Deployment": deployment,
    ROLLOUT: deployment,
    ANALYSIS_TEMPLATE: analysis_template,
    "kubernetes:core/v1:Namespace": namespace,
    "kubernetes:networking.k8s.io/v1:Ingress": ingress,
    "aws:sqs/queue:Queue": sqs_queue,
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration": bucket_encryption,
    "aws:iam/rolePolicy:RolePolicy": role_policy,
}


def check_resource(typ: str, props: Props) -> list[str]:
    rule = RESOURCE_RULES.get(typ)
    return rule(props) if rule else []


# -- Pulumi wiring --------------------------------------------------------------------------------


def _resource_policy(name: str, typ: str, rule: Callable[[Props], list[str]], description: str):
    def validate(args, report_violation):
        if args.resource_type == typ:
            for message in rule(args.props):
                report_violation(message)

    return ResourceValidationPolicy(
        name=name, description=description, enforcement_level=EnforcementLevel.MANDATORY, validate=validate
    )


def _stack_network_policies(args, report_violation):
    for message in network_policies((r.resource_type, r.props) for r in args.resources):
        report_violation(message)


def _stack_buckets_encrypted(args, report_violation):
    for message in buckets_encrypted((r.resource_type, r.props) for r in args.resources):
        report_violation(message)


def _stack_model_roles(args, report_violation):
    for message in model_roles((r.resource_type, r.props) for r in args.resources):
        report_violation(message)


POLICIES = [
    _resource_policy("ecr-scan-immutable", "aws:ecr/repository:Repository", ecr_repository,
                     "ECR repositories scan on push and have immutable tags."),
    _resource_policy("nodes-imdsv2-encrypted", "aws:ec2/launchTemplate:LaunchTemplate", launch_template,
                     "Node launch templates require IMDSv2 (hop limit 1), encrypt volumes, set no SSH key."),
    _resource_policy("nodegroups-no-ssh", "aws:eks/nodeGroup:NodeGroup", node_group,
                     "Managed node groups use a launch template and allow no SSH."),
    _resource_policy("subnets-no-public-ips", "aws:ec2/subnet:Subnet", subnet,
                     "No subnet hands out public IPs; nodes live in private subnets."),
    _resource_policy("eks-cluster-hardened", "eks:index:Cluster", eks_cluster,
                     "KMS secrets encryption, API auth mode, control-plane logs, restricted endpoint, private nodes."),
    _resource_policy("pods-hardened", "kubernetes:apps/v1:Deployment", deployment,
                     "Non-root, read-only root FS, no privilege escalation, ALL capabilities dropped, "
                     "RuntimeDefault seccomp, no service account token."),
    _resource_policy("rollout-pods-hardened", ROLLOUT, deployment,
                     "A canary's Rollout: the same pod rules as a Deployment's."),
    _resource_policy("canary-analysis-own-metrics", ANALYSIS_TEMPLATE, analysis_template,
                     "A canary's AnalysisTemplate reads only Myelin's own metrics, from Prometheus."),
    _resource_policy("namespaces-pss", "kubernetes:core/v1:Namespace", namespace,
                     "Namespaces enforce the restricted Pod Security Standard (or state why not)."),
    _resource_policy("ingress-endpoints-only", "kubernetes:networking.k8s.io/v1:Ingress", ingress,
                     "Ingresses route only API endpoints (never health/metrics) and redirect HTTP to HTTPS."),
    _resource_policy("sqs-encrypted", "aws:sqs/queue:Queue", sqs_queue,
                     "SQS queues are encrypted at rest (SSE-SQS or KMS)."),
    _resource_policy("s3-default-encryption", "aws:s3/bucketServerSideEncryptionConfiguration:"
                     "BucketServerSideEncryptionConfiguration", bucket_encryption,
                     "S3 default encryption is SSE-S3 or SSE-KMS."),
    _resource_policy("iam-no-wildcards", "aws:iam/rolePolicy:RolePolicy", role_policy,
                     "No IAM statement allows *, sqs:* or s3:*; SQS and S3 actions name their queues and buckets."),
    StackValidationPolicy(
        name="s3-buckets-encrypted",
        description="Every S3 bucket has a default encryption configuration.",
        enforcement_level=EnforcementLevel.MANDATORY,
        validate=_stack_buckets_encrypted,
    ),
    StackValidationPolicy(
        name="network-policies",
        description="Namespaces with workloads deny ingress and egress by default; each Deployment has its own "
                    "policy, admitting only load balancer subnets and Prometheus.",
        enforcement_level=EnforcementLevel.MANDATORY,
        validate=_stack_network_policies,
    ),
    StackValidationPolicy(
        name="model-roles-least-privilege",
        description="An API's IAM role reads its own predictor.model_uri and nothing else: s3:GetObject(Version) "
                    "within its prefix, s3:ListBucket on its bucket conditioned on that prefix.",
        enforcement_level=EnforcementLevel.MANDATORY,
        validate=_stack_model_roles,
    ),
]
