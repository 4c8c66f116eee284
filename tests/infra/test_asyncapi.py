"""`kind: AsyncAPI` in the cloud (components/apis/asyncapi.py), on the mocked dev and prod stacks, which both select
apis/hyperparameter-search: queues, bucket, IAM scoped to the API's own resources, gateway and worker, KEDA."""

from __future__ import annotations

import ast
import json
import math

import jsonschema
import kubernetes_validate
import pytest

from components.apis.asyncapi import GATEWAY_COMPUTE
from components.config import load_settings
from components.versions import KUBERNETES_VERSION
from myelin import contract
from myelin.spec import AsyncApiSpec, load_api_spec
from myelin.spec.asyncapi import visibility_timeout

from .harness import REPO, run_program, user_config
from .pulumi_mocks import _fake_id
from .test_k8s_schemas import CRD_SCHEMAS, manifest

API = "hyperparameter-search"
NS = "apis"
STORE_SQS = REPO / "predictor_image" / "myelin" / "asyncapi" / "store_sqs.py"


def spec(run) -> AsyncApiSpec:
    overrides = (run.config["myelin:apis"][API] or {}).get("overrides", {})
    out = load_api_spec(REPO / "apis" / API, overrides, "test")
    assert isinstance(out, AsyncApiSpec)
    return out


def one(items, what):
    assert len(items) == 1, f"expected one {what}, got {len(items)}"
    return items[0]


def queues(run):
    qs = {q.name: q for q in run.of_type("aws:sqs/queue:Queue")}
    return qs[f"{API}-queue"], qs[f"{API}-dlq"]


def bucket(run):
    return run.named("aws:s3/bucket:Bucket", f"{API}-jobs")


def role_policy(run, role):
    return json.loads(run.named("aws:iam/rolePolicy:RolePolicy", f"{API}-{role}-irsa").inputs["policy"])


def deployment(run, component):
    return one([d for d in run.api_objects("Deployment", component) if d.inputs["metadata"]["name"].startswith(API)],
               f"{component} Deployment").inputs


def container(dep):
    return one(dep["spec"]["template"]["spec"]["containers"], "container")


def env_of(dep):
    return {e["name"]: e.get("value") for e in container(dep)["env"]}


def actions(statement):
    a = statement["Action"]
    return set(a if isinstance(a, list) else [a])


def resources(statement):
    r = statement["Resource"]
    return set(r if isinstance(r, list) else [r])


# -- queues ----------------------------------------------------------------------------------------------------


def test_both_stacks_deploy_the_asyncapi(run):
    assert run.async_apis() == [API]
    assert run.outputs["endpoints"][API].endswith(f"/{API}")
    queue, dlq = queues(run)
    assert run.outputs["job_stores"] == {API: {
        "queue_url": queue.outputs["url"], "dead_letter_queue_url": dlq.outputs["url"],
        "storage_uri": f"s3://{bucket(run).outputs['bucket']}/"}}


def test_queue_and_dead_letter_queue_follow_the_spec_and_the_runtime(run):
    s = spec(run)
    queue, dlq = queues(run)
    q = queue.inputs
    assert q["sqsManagedSseEnabled"] is True and dlq.inputs["sqsManagedSseEnabled"] is True
    assert "kmsMasterKeyId" not in q  # SSE-SQS: no KMS key, no kms:* grant for the pods
    # jobs.retention 7d; SQS keeps at most 14 days, the dead-letter queue that long.
    assert q["messageRetentionSeconds"] == s.queue_retention_seconds == 7 * 86400
    assert dlq.inputs["messageRetentionSeconds"] == 14 * 86400
    # The runtime receives with ceil(visibility_timeout(serving.timeout)) (store_sqs.claim): 5m + 10% = 330 s.
    assert q["visibilityTimeoutSeconds"] == math.ceil(visibility_timeout(s.serving.timeout.seconds)) == 330
    redrive = json.loads(q["redrivePolicy"])
    # A backstop one receive after the worker's own dead-lettering at jobs.max_attempts (store_sqs docstring).
    assert redrive == {"deadLetterTargetArn": dlq.outputs["arn"], "maxReceiveCount": s.jobs.max_attempts + 1}
    allow = run.named("aws:sqs/redriveAllowPolicy:RedriveAllowPolicy", f"{API}-dlq-source").inputs
    assert allow["queueUrl"] == dlq.outputs["url"]
    assert json.loads(allow["redriveAllowPolicy"]) == {"redrivePermission": "byQueue",
                                                       "sourceQueueArns": [queue.outputs["arn"]]}


# -- bucket ----------------------------------------------------------------------------------------------------


def test_bucket_is_private_encrypted_tls_only_and_expires_jobs(run):
    b = bucket(run)
    name, arn = b.outputs["bucket"], b.outputs["arn"]
    assert b.inputs["bucketPrefix"].startswith(f"myelin-{run.stack}-{API}"[:36])
    # Outside prod `pulumi destroy` empties the bucket; in prod jobs still held stop it.
    assert b.inputs["forceDestroy"] is (run.stack != "prod")
    for typ in ("bucketPublicAccessBlock:BucketPublicAccessBlock", "bucketOwnershipControls:BucketOwnershipControls",
                "bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
                "bucketPolicy:BucketPolicy", "bucketLifecycleConfiguration:BucketLifecycleConfiguration"):
        assert run.named(f"aws:s3/{typ}", f"{API}-jobs").inputs["bucket"] == name, typ
    pab = run.named("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", f"{API}-jobs").inputs
    assert all(pab[k] is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls",
                                        "restrictPublicBuckets"))
    sse = run.named("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
                    f"{API}-jobs").inputs
    assert sse["rules"] == [{"applyServerSideEncryptionByDefault": {"sseAlgorithm": "AES256"}}]
    policy = json.loads(run.named("aws:s3/bucketPolicy:BucketPolicy", f"{API}-jobs").inputs["policy"])
    (deny,) = policy["Statement"]
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*"
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert set(deny["Resource"]) == {arn, f"{arn}/*"}
    (rule,) = run.named("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration",
                        f"{API}-jobs").inputs["rules"]
    assert rule["status"] == "Enabled"
    assert rule["filter"] == {"prefix": contract.ASYNC_JOBS_PREFIX}
    assert rule["expiration"] == {"days": spec(run).retention_days} and spec(run).retention_days == 7


def test_lifecycle_days_round_the_retention_up():
    s = load_api_spec(REPO / "apis" / API, {"jobs": {"retention": "36h"}}, "test")
    assert s.retention_days == 2 and s.queue_retention_seconds == 36 * 3600


# -- IAM -------------------------------------------------------------------------------------------------------


def _store_calls() -> set[tuple[str, str]]:
    """Every `self.sqs.<op>` / `self.s3.<op>` the runtime's SQS store names (called or handed to a thread)."""
    calls = set()
    for node in ast.walk(ast.parse(STORE_SQS.read_text())):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"
                and node.value.attr in ("sqs", "s3")):
            calls.add((node.value.attr, node.attr))
    return calls


#: boto3 operation -> the IAM action it needs (S3: HeadBucket is authorized as s3:ListBucket, HeadObject as
#: s3:GetObject; a conditional PutObject with If-None-Match needs only s3:PutObject).
IAM_ACTION = {
    ("sqs", "get_queue_attributes"): "sqs:GetQueueAttributes",
    ("sqs", "send_message"): "sqs:SendMessage",
    ("sqs", "receive_message"): "sqs:ReceiveMessage",
    ("sqs", "delete_message"): "sqs:DeleteMessage",
    ("sqs", "change_message_visibility"): "sqs:ChangeMessageVisibility",
    ("s3", "head_bucket"): "s3:ListBucket",
    ("s3", "list_objects_v2"): "s3:ListBucket",
    ("s3", "get_object"): "s3:GetObject",
    ("s3", "head_object"): "s3:GetObject",
    ("s3", "put_object"): "s3:PutObject",
    ("s3", "delete_object"): "s3:DeleteObject",
}


def test_roles_grant_exactly_what_the_runtime_calls(run):
    calls = _store_calls()
    assert calls and calls <= set(IAM_ACTION), f"map these to IAM actions: {sorted(calls - set(IAM_ACTION))}"
    gateway = {a for st in role_policy(run, "gateway")["Statement"] for a in actions(st)}
    worker = {a for st in role_policy(run, "worker")["Statement"] for a in actions(st)}
    assert gateway == set(contract.ASYNC_GATEWAY_ACTIONS)
    assert worker == set(contract.ASYNC_WORKER_ACTIONS)
    assert gateway | worker == {IAM_ACTION[c] for c in calls}
    # The gateway never takes, deletes or dead-letters a job.
    assert not gateway & {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "s3:DeleteObject"}


def test_role_statements_name_only_the_apis_own_queues_and_bucket(run):
    queue, dlq = queues(run)
    q, d, b = queue.outputs["arn"], dlq.outputs["arn"], bucket(run).outputs["arn"]
    objects = f"{b}/{contract.ASYNC_JOBS_PREFIX}*"
    expected = {
        "gateway": {
            "SubmitJobs": ({"sqs:SendMessage"}, {q}),
            "ReadQueues": ({"sqs:GetQueueAttributes"}, {q, d}),
            "JobObjects": ({"s3:GetObject", "s3:PutObject"}, {objects}),
            "Bucket": ({"s3:ListBucket"}, {b}),
        },
        "worker": {
            "TakeJobs": ({"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:SendMessage"},
                         {q}),
            "DeadLetter": ({"sqs:SendMessage"}, {d}),
            "ReadQueues": ({"sqs:GetQueueAttributes"}, {q, d}),
            "JobObjects": ({"s3:GetObject", "s3:PutObject", "s3:DeleteObject"}, {objects}),
            "Bucket": ({"s3:ListBucket"}, {b}),
        },
    }
    for role, statements in expected.items():
        doc = role_policy(run, role)
        got = {st["Sid"]: (actions(st), resources(st)) for st in doc["Statement"]}
        assert got == statements, role
        assert all(st["Effect"] == "Allow" and "Condition" not in st for st in doc["Statement"])


def test_each_role_is_assumable_only_by_its_service_account(run):
    for role in ("gateway", "worker"):
        trust = json.loads(run.named("aws:iam/role:Role", f"{API}-{role}-irsa").inputs["assumeRolePolicy"])
        (st,) = trust["Statement"]
        assert st["Action"] == "sts:AssumeRoleWithWebIdentity"
        subs = [v for k, v in st["Condition"]["StringEquals"].items() if k.endswith(":sub")]
        assert subs == [f"system:serviceaccount:{NS}:{API}-{role}"]
        sa = one([s for s in run.k8s("ServiceAccount") if s.inputs["metadata"]["name"] == f"{API}-{role}"], "SA")
        arn = run.named("aws:iam/role:Role", f"{API}-{role}-irsa").outputs["arn"]
        assert sa.inputs["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": arn}
        assert sa.inputs["automountServiceAccountToken"] is False
        dep = deployment(run, role)
        assert dep["spec"]["template"]["spec"]["serviceAccountName"] == f"{API}-{role}"


def test_keda_reads_only_this_queue_with_its_own_role(run):
    queue, _ = queues(run)
    keda_role = run.named("aws:iam/role:Role", f"myelin-{run.stack}-keda-irsa")
    trust = json.loads(keda_role.inputs["assumeRolePolicy"])["Statement"][0]
    assert [v for k, v in trust["Condition"]["StringEquals"].items() if k.endswith(":sub")] == [
        "system:serviceaccount:keda:keda-operator"]
    grant = run.named("aws:iam/rolePolicy:RolePolicy", f"{API}-keda-queue").inputs
    assert grant["role"] == _fake_id("aws:iam/role:Role", keda_role.name)  # the KEDA role's id
    (st,) = json.loads(grant["policy"])["Statement"]
    assert actions(st) == {"sqs:GetQueueAttributes"} and resources(st) == {queue.outputs["arn"]}
    # KEDA's role carries no policy of its own: each AsyncAPI grants its queue.
    assert not [p for p in run.of_type("aws:iam/rolePolicy:RolePolicy") if p.name == f"myelin-{run.stack}-keda-irsa"]
    values = next(r.inputs["values"] for r in run.of_type("kubernetes:helm.sh/v3:Release")
                  if r.inputs["chart"] == "keda")
    assert values["podIdentity"] == {"aws": {"irsa": {"enabled": True, "roleArn": keda_role.outputs["arn"]}}}
    # A new role rolls the operator: EKS injects IRSA credentials only into new pods.
    assert values["podAnnotations"]["keda"] == {"myelin.dev/aws-role": keda_role.outputs["arn"]}


def test_a_stack_without_asyncapi_gives_keda_no_role():
    config = user_config("dev")
    config["myelin:apis"] = {k: v for k, v in config["myelin:apis"].items() if k != API}
    run = run_program("dev", config)
    assert not [r for r in run.of_type("aws:iam/role:Role") if "keda" in r.name]
    assert not run.of_type("aws:sqs/queue:Queue") and not run.of_type("aws:s3/bucket:Bucket")
    values = next(r.inputs["values"] for r in run.of_type("kubernetes:helm.sh/v3:Release")
                  if r.inputs["chart"] == "keda")
    assert "podIdentity" not in values and "podAnnotations" not in values


def test_without_nat_the_pods_reach_sqs_through_an_interface_endpoint():
    config = user_config("dev")
    config["myelin:network"] = {**config["myelin:network"], "nat": "none"}
    run = run_program("dev", config)
    services = {e.inputs["serviceName"] for e in run.of_type("aws:ec2/vpcEndpoint:VpcEndpoint")}
    assert {"com.amazonaws.us-west-2.sqs", "com.amazonaws.us-west-2.sts", "com.amazonaws.us-west-2.s3"} <= services


# -- Deployments -----------------------------------------------------------------------------------------------


def test_gateway_and_worker_run_the_roles_on_the_sqs_store(run):
    s = spec(run)
    queue, dlq = queues(run)
    store = {
        contract.ASYNC_STORE_ENV: contract.ASYNC_STORE_SQS,
        contract.ASYNC_QUEUE_URL_ENV: queue.outputs["url"],
        contract.ASYNC_DEAD_LETTER_QUEUE_URL_ENV: dlq.outputs["url"],
        contract.ASYNC_STORAGE_URI_ENV: f"s3://{bucket(run).outputs['bucket']}/",
        "AWS_REGION": run.config["aws:region"],
    }
    gateway, worker = deployment(run, "gateway"), deployment(run, "worker")
    for role, dep in (("gateway", gateway), ("worker", worker)):
        env = env_of(dep)
        assert container(dep)["args"] == ["--role", role]
        assert env[contract.ROLE_ENV] == role
        assert {k: env[k] for k in store} == store
        assert contract.STATE_DIR_ENV not in env  # the SQLite store's; unused with sqs
        runtime_spec = AsyncApiSpec.model_validate_json(env[contract.SPEC_ENV])
        assert runtime_spec.kind == "AsyncAPI" and runtime_spec.jobs == s.jobs
        assert runtime_spec.serving.timeout == s.serving.timeout
        pod = dep["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        sc = container(dep)["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["runAsNonRoot"] is True and sc["capabilities"]["drop"] == ["ALL"]
    # The gateway: always up (its autoscaler keeps two: tests/infra/test_cloud_review.py), small, no GPU.
    assert gateway["metadata"]["name"] == API and "replicas" not in gateway["spec"]
    res = container(gateway)["resources"]
    assert res["requests"] == {"cpu": GATEWAY_COMPUTE.cpu, "memory": GATEWAY_COMPUTE.mem} == {
        "cpu": "100m", "memory": "512Mi"}
    assert "nvidia.com/gpu" not in res["limits"]
    assert "tolerations" not in gateway["spec"]["template"]["spec"]
    # The worker: the spec's compute, its replica count owned by KEDA.
    assert worker["metadata"]["name"] == f"{API}-worker" and "replicas" not in worker["spec"]
    assert container(worker)["resources"]["requests"] == {"cpu": s.compute.cpu, "memory": s.compute.mem}
    assert AsyncApiSpec.model_validate_json(env_of(worker)[contract.SPEC_ENV]) == s


def test_gateway_and_worker_select_only_their_own_pods(run):
    gateway, worker = deployment(run, "gateway"), deployment(run, "worker")
    g_sel, w_sel = gateway["spec"]["selector"]["matchLabels"], worker["spec"]["selector"]["matchLabels"]
    g_pods, w_pods = gateway["spec"]["template"]["metadata"]["labels"], worker["spec"]["template"]["metadata"]["labels"]
    assert g_sel.items() <= g_pods.items() and w_sel.items() <= w_pods.items()
    assert not g_sel.items() <= w_pods.items() and not w_sel.items() <= g_pods.items()
    selecting = {"gateway": [], "worker": []}
    for kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
        for obj in run.k8s(kind):
            sel = obj.inputs["spec"].get("selector") or obj.inputs["spec"].get("podSelector") or {}
            sel = sel.get("matchLabels", sel)
            if not sel:
                continue  # the namespace's default deny
            # No Service, PDB or NetworkPolicy selects both halves of the API.
            assert not (sel.items() <= g_pods.items() and sel.items() <= w_pods.items()), (kind, sel)
            for role, pods in (("gateway", g_pods), ("worker", w_pods)):
                if sel.items() <= pods.items():
                    selecting[role].append(kind)
    assert sorted(selecting["gateway"]) == ["NetworkPolicy", "PodDisruptionBudget", "Service"]
    assert sorted(selecting["worker"]) == ["NetworkPolicy", "PodDisruptionBudget"]


def test_api_keys_guard_the_gateway_only(prod):
    gateway, worker = deployment(prod, "gateway"), deployment(prod, "worker")
    keys_env = spec(prod).networking.auth.api_keys_env + contract.API_KEYS_FILE_SUFFIX
    assert keys_env in env_of(gateway) and keys_env not in env_of(worker)
    assert not [v for v in worker["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    secret = one(prod.api_objects("Secret", "gateway"), "gateway Secret")
    assert secret.inputs["metadata"]["name"] == f"{API}-api-keys"


# -- KEDA ------------------------------------------------------------------------------------------------------


def test_workers_scale_on_the_queue_down_to_zero(run):
    s = spec(run)
    queue, _ = queues(run)
    so = one([o for o in run.k8s("ScaledObject") if o.inputs["metadata"]["name"] == f"{API}-worker"], "ScaledObject")
    sp = so.inputs["spec"]
    assert sp["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"{API}-worker"}
    assert sp["minReplicaCount"] == s.autoscaling.min_replicas == 0
    assert sp["maxReplicaCount"] == s.autoscaling.max_replicas == {"dev": 2, "prod": 10}[run.stack]
    assert sp["pollingInterval"] == 30 and sp["cooldownPeriod"] == 300
    (trigger,) = sp["triggers"]
    assert trigger["type"] == "aws-sqs-queue"
    assert trigger["metadata"] == {
        "queueURL": queue.outputs["url"], "awsRegion": run.config["aws:region"],
        "queueLength": str(s.target_queue_depth), "activationQueueLength": "0", "scaleOnInFlight": "true"}
    assert s.target_queue_depth == 2
    assert "identityOwner" not in trigger["metadata"]  # the deprecated legacy path (ignored with podIdentity aws)
    auth = one([a for a in run.k8s("TriggerAuthentication")
                if a.inputs["metadata"]["name"] == trigger["authenticationRef"]["name"]], "TriggerAuthentication")
    assert trigger["authenticationRef"]["kind"] == "TriggerAuthentication"
    assert auth.inputs["metadata"]["namespace"] == so.inputs["metadata"]["namespace"] == NS
    assert auth.inputs["spec"] == {"podIdentity": {"provider": "aws"}}  # the operator's role
    # Created after the worker, its TriggerAuthentication and KEDA's grant on the queue (deleted before them).
    deps = {d.name for d in run.direct_deps(run.node("kubernetes:keda.sh/v1alpha1:ScaledObject", so.name))}
    assert {f"{API}-worker", f"{API}-queue-auth", f"{API}-keda-queue"} <= deps
    # An AsyncAPI at zero wakes on its queue, not through the HTTP add-on's interceptor.
    assert not [r for r in run.k8s("InterceptorRoute") if API in json.dumps(r.inputs)]


def test_asyncapi_objects_are_schema_valid(run):
    objs = [r for r in run.k8s("Deployment") + run.k8s("Service") + run.k8s("ServiceAccount") + run.k8s("Ingress")
            + run.k8s("NetworkPolicy") + run.k8s("PodDisruptionBudget") + run.k8s("ScaledObject")
            + run.k8s("TriggerAuthentication") + run.k8s("Secret")
            if r.inputs["metadata"].get("labels", {}).get("app.kubernetes.io/name") == API]
    kinds = sorted(r.inputs["kind"] for r in objs)
    assert kinds.count("Deployment") == 2 and "ScaledObject" in kinds and "TriggerAuthentication" in kinds
    for rec in objs:
        obj = manifest(rec)
        key = (obj["apiVersion"], obj["kind"])
        if key in CRD_SCHEMAS:
            jsonschema.Draft202012Validator(json.loads(CRD_SCHEMAS[key].read_text())).validate(obj)
        else:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_crd_schemas_reject_a_broken_queue_trigger_or_auth(dev):
    so = manifest(one([o for o in dev.k8s("ScaledObject") if o.inputs["metadata"]["name"] == f"{API}-worker"], "SO"))
    so_schema = jsonschema.Draft202012Validator(json.loads(CRD_SCHEMAS[("keda.sh/v1alpha1", "ScaledObject")].read_text()))
    so_schema.validate(so)
    no_region = json.loads(json.dumps(so))
    del no_region["spec"]["triggers"][0]["metadata"]["awsRegion"]
    nested_url = json.loads(json.dumps(so))  # the scaler wants exactly /<account>/<name>
    nested_url["spec"]["triggers"][0]["metadata"]["queueURL"] += "/extra"
    bad_ref = json.loads(json.dumps(so))
    bad_ref["spec"]["triggers"][0]["authenticationRef"]["kind"] = "Secret"
    for broken in (no_region, nested_url, bad_ref):
        with pytest.raises(jsonschema.ValidationError):
            so_schema.validate(broken)
    auth = manifest(one(dev.k8s("TriggerAuthentication"), "TriggerAuthentication"))
    ta_schema = jsonschema.Draft202012Validator(
        json.loads(CRD_SCHEMAS[("keda.sh/v1alpha1", "TriggerAuthentication")].read_text()))
    ta_schema.validate(auth)
    both = json.loads(json.dumps(auth))  # the webhook refuses roleArn with identityOwner workload
    both["spec"]["podIdentity"].update(roleArn="arn:aws:iam::123456789012:role/x", identityOwner="workload")
    unknown = json.loads(json.dumps(auth))
    unknown["spec"]["podIdentity"]["provider"] = "aws-irsa"
    for broken in (both, unknown):
        with pytest.raises(jsonschema.ValidationError):
            ta_schema.validate(broken)


# -- traffic ---------------------------------------------------------------------------------------------------


def test_gateway_is_reachable_through_the_ingress_and_the_worker_is_not(run):
    s = spec(run)
    gateway = deployment(run, "gateway")
    ing = one(run.api_objects("Ingress", "gateway"), "gateway Ingress").inputs
    (rule,) = ing["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    # Prefix: POST <endpoint> and GET <endpoint>/<id>; the same shared ALB group as the RealtimeAPIs.
    assert path == {"path": s.endpoint, "pathType": "Prefix",
                    "backend": {"service": {"name": API, "port": {"name": "http"}}}}
    ann = ing["metadata"]["annotations"]
    assert ann["alb.ingress.kubernetes.io/group.name"] == f"myelin-{run.stack}-{s.networking.visibility}"
    service = one([x for x in run.k8s("Service") if x.inputs["metadata"]["name"] == API], "Service").inputs
    assert service["spec"]["selector"] == gateway["spec"]["selector"]["matchLabels"]
    assert not run.api_objects("Ingress", "worker") and not run.api_objects("Service", "worker")
    worker_pods = deployment(run, "worker")["spec"]["template"]["metadata"]["labels"]
    for svc in run.k8s("Service"):
        sel = svc.inputs["spec"].get("selector") or {}
        assert not (sel and sel.items() <= worker_pods.items()), svc.inputs["metadata"]["name"]


def test_network_policies_admit_the_load_balancer_to_the_gateway_only_and_https_out(run):
    pols = {p.inputs["metadata"]["name"]: p.inputs["spec"] for p in run.k8s("NetworkPolicy")}
    subnets = run.of_type("aws:ec2/subnet:Subnet")
    lb_tag = "kubernetes.io/role/elb" if spec(run).networking.visibility == "public" else "kubernetes.io/role/internal-elb"
    lb = {x.inputs["cidrBlock"] for x in subnets if lb_tag in x.inputs["tags"]}
    for name, dep in ((API, deployment(run, "gateway")), (f"{API}-worker", deployment(run, "worker"))):
        pol = pols[name]
        assert pol["podSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
        sources = [p for rule in pol["ingress"] for p in rule["from"]]
        cidrs = {p["ipBlock"]["cidr"] for p in sources if "ipBlock" in p}
        assert cidrs == (lb if name == API else set())
        assert any(p.get("namespaceSelector", {}).get("matchLabels") == {"kubernetes.io/metadata.name": "monitoring"}
                   for p in sources)
        https = [r for r in pol["egress"] if r["ports"] == [{"port": 443, "protocol": "TCP"}]]
        assert https == [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 443, "protocol": "TCP"}]}]


# -- stack config ----------------------------------------------------------------------------------------------


def test_the_alb_idle_timeout_does_not_bound_an_asyncapi_job():
    """serving.timeout bounds a job in a worker, not a request: a job longer than the ALB idle timeout is fine,
    while the same timeout on a RealtimeAPI is still refused."""
    from myelin.spec import SpecError

    config = {k.split(":", 1)[1]: v for k, v in user_config("dev").items() if k.startswith("myelin:")}
    config["apis"] = {API: {"overrides": {"serving": {"timeout": "2h"}}}}
    settings = load_settings(config, "dev", "us-west-2")
    assert settings.apis[0].spec.serving.timeout.seconds == 7200 > config["ingress"]["idle_timeout_seconds"]
    config["apis"] = {"iris-classifier": {"overrides": {"serving": {"timeout": "2h"}}}}
    with pytest.raises(SpecError, match="idle_timeout_seconds"):
        load_settings(config, "dev", "us-west-2")
