"""Models from S3 in the cluster (issue 14), under Pulumi's mocks with moto in server mode as S3.

The dev stack with wine-classifier added and its `predictor.model_uri` overridden to an s3:// prefix (as its
README shows), run twice: once, then again after a new object is put at the same URI. The program lists the
model with boto3 through `AWS_ENDPOINT_URL`, exactly as `pulumi up` does with the deployer's credentials.
"""

from __future__ import annotations

import copy
import json
import socket
import kubernetes_validate
import pytest

from components.apis.model import MODEL_CACHE_DIR, cache_max_bytes, partition_of, resolve_models
from components.config import REPO_ROOT, load_settings
from components.image import context_files
from components.versions import KUBERNETES_VERSION
from myelin.model_files import resolve_model_version
from myelin.spec import SpecError, s3_scope
from tests.models.moto_s3 import AWS_VARS, DUMMY, ISOLATED, MotoS3

from .harness import StackRun, run_program, user_config
from .pulumi_mocks import ACCOUNT, _fake_id
from .test_k8s_schemas import CRD_SCHEMAS, k8s_objects, manifest
from .test_policy import resources, violations

API = "wine-classifier"
BUCKET = "myelin-models"
PREFIX = "models/wine-classifier/"
URI = f"s3://{BUCKET}/{PREFIX}"
MODEL_FOLDER = REPO_ROOT / "apis" / API / "model"
ROLE = f"{API}-model-irsa"


def with_wine(config: dict, overrides: dict | None) -> dict:
    config = copy.deepcopy(config)
    config["myelin:apis"][API] = {"overrides": overrides} if overrides else None
    return config


def s3_config(uri: str = URI, model_disk: str | None = "1Gi") -> dict:
    overrides: dict = {"predictor": {"model_uri": uri}}
    if model_disk is not None:
        overrides["compute"] = {"model_disk": model_disk}
    return with_wine(user_config("dev"), overrides)


def raw_of(config: dict) -> dict:
    return {k.split(":", 1)[1]: v for k, v in config.items() if k.startswith("myelin:")}


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """moto on 127.0.0.1, reached by the program through AWS_ENDPOINT_URL with dummy credentials."""
    server = MotoS3(tmp_path_factory.mktemp("moto"))
    with pytest.MonkeyPatch.context() as mp:
        for name in AWS_VARS:
            mp.delenv(name, raising=False)
        for name, value in server.env().items():
            mp.setenv(name, value)
        s3 = server.client()
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        for path in sorted(MODEL_FOLDER.iterdir()):  # as `aws s3 cp model s3://.../ --recursive` does
            s3.put_object(Bucket=BUCKET, Key=PREFIX + path.name, Body=path.read_bytes())
        yield server
    server.stop()


@pytest.fixture(scope="module")
def runs(moto) -> dict:
    """The program run, then a new weights.json at the same URI, then the program run again."""
    before = resolve_model_version(URI)
    first = run_program("dev", s3_config())
    weights = json.loads((MODEL_FOLDER / "weights.json").read_text())
    moto.client().put_object(Bucket=BUCKET, Key=PREFIX + "weights.json",
                             Body=json.dumps({**weights, "retrained": True}).encode())
    after = resolve_model_version(URI)
    second = run_program("dev", s3_config())
    return {"first": first, "second": second, "before": before, "after": after}


def deployment(run: StackRun, name: str = API) -> dict:
    (dep,) = [d.inputs for d in run.api_deployments() if d.inputs["metadata"]["name"] == name]
    return dep


def env_of(dep: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}


def service_accounts(run: StackRun) -> dict[str, dict]:
    return {r.inputs["metadata"]["name"]: r.inputs for r in run.k8s("ServiceAccount")
            if r.inputs["metadata"].get("namespace") == "apis"}


# -- identity ------------------------------------------------------------------------------------


def test_the_api_gets_its_own_role_trusted_only_by_its_service_account(runs):
    run = runs["first"]
    role = run.named("aws:iam/role:Role", ROLE).inputs
    (statement,) = json.loads(role["assumeRolePolicy"])["Statement"]
    issuer = "oidc.eks.us-west-2.amazonaws.com/id/MOCKOIDC"
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert statement["Principal"] == {"Federated": f"arn:aws:iam::{ACCOUNT}:oidc-provider/{issuer}"}
    assert statement["Condition"] == {"StringEquals": {f"{issuer}:sub": f"system:serviceaccount:apis:{API}",
                                                       f"{issuer}:aud": "sts.amazonaws.com"}}
    assert role["tags"] == {"myelin:stack": "dev", "myelin:api": API}
    # The component's children: one role, one inline policy; no managed policies.
    assert not [r for r in run.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment") if API in r.name]


def test_the_role_policy_reads_exactly_the_prefix(runs):
    run = runs["first"]
    policy = run.named("aws:iam/rolePolicy:RolePolicy", ROLE).inputs
    assert policy["role"] == _fake_id("aws:iam/role:Role", ROLE)  # attached to that role
    assert policy["name"] == f"myelin-model-{API}"
    document = json.loads(policy["policy"])
    assert document == s3_scope(URI).policy_document()
    read, listing = document["Statement"]
    assert read["Action"] == ["s3:GetObject"]  # no ?versionId= pinned: no s3:GetObjectVersion
    assert read["Resource"] == [f"arn:aws:s3:::{BUCKET}/{PREFIX}*"]
    assert listing["Action"] == ["s3:ListBucket"] and listing["Resource"] == [f"arn:aws:s3:::{BUCKET}"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": [f"{PREFIX}*"]}}


def test_a_pinned_version_adds_get_object_version_and_names_one_object(moto):
    version = moto.client().head_object(Bucket=BUCKET, Key=PREFIX + "config.json")["VersionId"]
    uri = f"s3://{BUCKET}/{PREFIX}config.json?versionId={version}"
    run = run_program("dev", s3_config(uri))
    read, listing = json.loads(run.named("aws:iam/rolePolicy:RolePolicy", ROLE).inputs["policy"])["Statement"]
    assert read["Action"] == ["s3:GetObject", "s3:GetObjectVersion"]  # HeadObject/GetObject with VersionId
    assert read["Resource"] == [f"arn:aws:s3:::{BUCKET}/{PREFIX}config.json", f"arn:aws:s3:::{BUCKET}/{PREFIX}config.json/*"]
    assert env_of(deployment(run))["MYELIN_MODEL_VERSION"] == resolve_model_version(uri)


def test_the_service_account_carries_the_role_and_no_token(runs):
    run = runs["first"]
    sas = service_accounts(run)
    assert sas[API]["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": f"arn:aws:iam::{ACCOUNT}:role/{ROLE}"}
    assert sas[API]["automountServiceAccountToken"] is False
    pod = deployment(run)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == API and pod["automountServiceAccountToken"] is False
    # Created after the role's policy: no pod starts before it may read its model.
    sa_node = run.node("kubernetes:core/v1:ServiceAccount", f"{API}-sa")
    assert {("aws:iam/rolePolicy:RolePolicy", ROLE), ("aws:iam/role:Role", ROLE)} <= {d.key for d in run.all_deps(sa_node)}


def test_apis_without_an_s3_model_have_no_role(runs):
    run = runs["first"]
    sas = service_accounts(run)
    # An AsyncAPI's gateway and worker have roles of their own (their job store), not a model role.
    job_store_sas = {n for n in sas if n.startswith("hyperparameter-search-")}
    assert job_store_sas == {"hyperparameter-search-gateway", "hyperparameter-search-worker"}
    sas = {n: sa for n, sa in sas.items() if n not in job_store_sas}
    assert set(sas) == {"iris-classifier", "kmeans", "image-classifier", API}
    for name, sa in sas.items():
        if name != API:
            assert "annotations" not in sa["metadata"] and sa["automountServiceAccountToken"] is False
            assert "MYELIN_MODEL_VERSION" not in env_of(deployment(run, name))
    model_policies = [r.inputs["name"] for r in run.of_type("aws:iam/rolePolicy:RolePolicy")
                      if str(r.inputs.get("name", "")).startswith("myelin-model-")]
    assert model_policies == [f"myelin-model-{API}"]


# -- the pod -------------------------------------------------------------------------------------


def test_the_pod_caches_the_model_on_its_own_volume_sized_by_model_disk(runs):
    pod = deployment(runs["first"])["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model-cache"] == {"name": "model-cache", "emptyDir": {"sizeLimit": "1Gi"}}
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "model-cache"]
    assert mount == {"name": "model-cache", "mountPath": MODEL_CACHE_DIR}  # read-write
    env = env_of(deployment(runs["first"]))
    assert env["MYELIN_MODEL_CACHE"] == MODEL_CACHE_DIR
    bound = int(env["MYELIN_MODEL_CACHE_MAX_BYTES"])
    assert bound == cache_max_bytes(2**30) and 0.9 * 2**30 < bound < 2**30
    assert container["resources"]["requests"]["ephemeral-storage"] == "1Gi"
    # Still the restricted profile: read-only root, non-root, nothing added.
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["fsGroup"] == 10001


def test_the_pod_template_records_the_resolved_model_version(runs):
    assert runs["before"] and len(runs["before"]) == 64
    assert env_of(deployment(runs["first"]))["MYELIN_MODEL_VERSION"] == runs["before"]


def test_a_new_object_at_the_same_uri_changes_only_the_recorded_version(runs):
    """What `pulumi preview` shows after an upload, and what makes `pulumi up` roll the pods."""
    assert runs["after"] != runs["before"]
    first, second = deployment(runs["first"]), deployment(runs["second"])
    assert env_of(second)["MYELIN_MODEL_VERSION"] == runs["after"]
    strip = copy.deepcopy(first), copy.deepcopy(second)
    for dep in strip:
        for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]:
            if e["name"] == "MYELIN_MODEL_VERSION":
                e["value"] = "-"
    assert strip[0] == strip[1]  # the version is the whole diff: same image, same everything else
    for other in ("iris-classifier", "kmeans", "image-classifier"):
        assert deployment(runs["first"], other) == deployment(runs["second"], other)


def test_only_the_s3_api_may_connect_out_on_443(runs):
    pols = {p.inputs["metadata"]["name"]: p.inputs["spec"] for p in runs["first"].k8s("NetworkPolicy")}
    https = {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 443, "protocol": "TCP"}]}
    assert pols[API]["egress"][-1] == https
    assert pols[API]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": API, "app.kubernetes.io/instance": API}}
    for name in ("iris-classifier", "kmeans", "image-classifier"):
        assert https not in pols[name]["egress"]


def test_every_new_object_is_strictly_valid(runs):
    checked = 0
    for rec in k8s_objects(runs["first"]):
        obj = manifest(rec)
        if (obj["apiVersion"], obj["kind"]) in CRD_SCHEMAS:
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        checked += 1 if obj["metadata"].get("name") == API else 0
    assert checked >= 5  # ServiceAccount, Deployment, Service, PDB, NetworkPolicy, Ingress of the S3 API
    broken = manifest(next(r for r in k8s_objects(runs["first"]) if r.inputs["kind"] == "Deployment"
                           and r.inputs["metadata"]["name"] == API))
    broken["spec"]["template"]["spec"]["volumes"][-1]["emptyDir"]["sizeLimits"] = "1Gi"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


# -- policy pack ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def policies():
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("myelin_policies", REPO_ROOT / "policy" / "myelin_policies.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["myelin_policies"] = module
    spec.loader.exec_module(module)
    return module


def test_the_s3_stack_passes_the_policy_pack(policies, runs):
    assert violations(policies, resources(runs["first"])) == []


def _with_policy(run: StackRun, mutate) -> list:
    items = resources(run)
    for typ, props in items:
        if typ == "aws:iam/rolePolicy:RolePolicy" and props.get("name") == f"myelin-model-{API}":
            document = json.loads(props["policy"])
            mutate(document["Statement"])
            props["policy"] = json.dumps(document)
            return items
    raise AssertionError("no model policy")


OVER_BROAD = [
    ("s3:* on the prefix", lambda st: st[0].update(Action="s3:*"), "more than reading the model"),
    ("PutObject added", lambda st: st[0]["Action"].append("s3:PutObject"), "more than reading the model"),
    ("Resource *", lambda st: st[0].update(Resource="*"), "beyond the model's bucket"),
    ("the whole bucket", lambda st: st[0].update(Resource=[f"arn:aws:s3:::{BUCKET}/*"]), "reads beyond the model"),
    ("a parent prefix", lambda st: st[0].update(Resource=[f"arn:aws:s3:::{BUCKET}/models/*"]), "reads beyond the model"),
    ("a sibling prefix", lambda st: st[0].update(Resource=[f"arn:aws:s3:::{BUCKET}/models/wine-classifier2/*"]),
     "reads beyond the model"),
    ("another bucket", lambda st: st[0].update(Resource=[f"arn:aws:s3:::other/{PREFIX}*"]), "beyond the model's bucket"),
    ("listing unconditioned", lambda st: st[1].pop("Condition"), "lists the whole bucket"),
    ("listing a parent", lambda st: st[1]["Condition"]["StringLike"].update({"s3:prefix": ["models/*"]}),
     "reaches beyond the model"),
    ("NotResource", lambda st: st.append({"Effect": "Allow", "Action": "s3:GetObject", "NotResource": "x"}),
     "NotAction/NotResource"),
]


@pytest.mark.parametrize("label, mutate, message", OVER_BROAD, ids=[o[0] for o in OVER_BROAD])
def test_the_policy_pack_fails_a_role_that_reads_beyond_its_prefix(policies, runs, label, mutate, message):
    found = violations(policies, _with_policy(runs["first"], mutate))
    # The stack-wide wildcard rule (iam-no-wildcards) may catch it too; the model rule always does.
    assert found and all(v.startswith(("model-roles-least-privilege: ", "iam-no-wildcards: ")) for v in found), found
    assert any(v.startswith("model-roles-least-privilege: ") and message in v for v in found), found


def test_the_policy_pack_fails_s3_grants_to_an_api_without_an_s3_model(policies, runs):
    items = resources(runs["first"])
    for typ, props in items:
        if typ == "aws:iam/rolePolicy:RolePolicy" and props.get("name") == f"myelin-model-{API}":
            props["name"] = "myelin-model-iris-classifier"
    assert any("API iris-classifier has no s3:// predictor.model_uri" in v for v in violations(policies, items))


def test_prefix_without_slash_covers_the_object_and_its_folder_only(policies):
    document = s3_scope("s3://bkt/models/wine").policy_document()
    assert policies.model_role_policy("x", "s3://bkt/models/wine", document) == []
    document["Statement"][0]["Resource"].append("arn:aws:s3:::bkt/models/wine*")  # would match models/wine2
    assert policies.model_role_policy("x", "s3://bkt/models/wine", document)


# -- refused before anything is registered -------------------------------------------------------


def test_an_s3_model_without_model_disk_is_refused():
    with pytest.raises(SpecError) as err:
        load_settings(raw_of(s3_config(model_disk=None)), "dev", "us-west-2")
    message = str(err.value)
    assert f"apis/{API}/api.yaml (stack dev): compute.model_disk: required with an s3:// predictor.model_uri" in message
    assert URI in message


def test_a_model_disk_larger_than_the_node_disk_is_refused():
    with pytest.raises(SpecError, match=r"compute.model_disk: 60Gi does not fit on a node: "
                                        r"myelin:cluster.cpu_nodes.disk_size_gib is 50"):
        load_settings(raw_of(s3_config(model_disk="60Gi")), "dev", "us-west-2")


def test_a_model_larger_than_its_volume_is_refused(moto):
    moto.client().put_object(Bucket=BUCKET, Key="big/model.bin", Body=b"\0" * (3 * 2**20))
    settings = load_settings(raw_of(s3_config("s3://myelin-models/big/model.bin", model_disk="2Mi")), "dev", "us-west-2")
    with pytest.raises(SpecError) as err:
        resolve_models(settings.apis, "dev", preview=False)
    message = str(err.value)
    assert "compute.model_disk" in message and "is 3145728 bytes" in message
    assert "at least 4Mi" in message


@pytest.mark.parametrize("uri, reason", [
    (f"s3://{BUCKET}/no-such-model/", "not found"),
    ("s3://no-such-bucket-here/model/", "not found"),
])
def test_a_model_that_cannot_be_listed_stops_the_program_naming_api_and_uri(moto, uri, reason):
    with pytest.raises(SpecError) as err:
        run_program("dev", s3_config(uri))
    message = str(err.value)
    assert f"predictor.model_uri: API {API}: pulumi up records the version of the model at {uri}" in message
    assert f"could not list it: {reason}" in message and "s3:ListBucket" in message


def test_preview_without_reaching_s3_fails_naming_api_and_uri(monkeypatch):
    for name in AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        for name, value in {**DUMMY, **ISOLATED, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():
            monkeypatch.setenv(name, value)
        settings = load_settings(raw_of(s3_config()), "dev", "us-west-2")
        with pytest.raises(SpecError) as err:
            resolve_models(settings.apis, "dev", preview=True)
    message = str(err.value)
    assert f"API {API}: pulumi preview records the version of the model at {URI}" in message
    assert "cannot reach S3" in message


def test_without_credentials_the_program_says_so(monkeypatch):
    for name in AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in ISOLATED.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(raw_of(s3_config()), "dev", "us-west-2")
    with pytest.raises(SpecError, match=f"API {API}: pulumi up records the version of the model at {URI} and "
                                        "could not list it: no credentials"):
        resolve_models(settings.apis, "dev", preview=False)


# -- local model_uri: the files must be in the image ---------------------------------------------


def test_the_committed_local_model_goes_into_the_image_and_needs_no_role():
    folder = REPO_ROOT / "apis" / API
    assert {"model/config.json", "model/weights.json"} <= set(context_files(folder))
    run = run_program("dev", with_wine(user_config("dev"), None))
    env = env_of(deployment(run))
    assert json.loads(env["MYELIN_API_SPEC"])["predictor"]["model_uri"] == "model"
    assert not {"MYELIN_MODEL_VERSION", "MYELIN_MODEL_CACHE"} & set(env)
    assert "annotations" not in service_accounts(run)[API]["metadata"]
    assert not [r for r in run.of_type("aws:iam/role:Role") if API in r.name]


@pytest.mark.parametrize("uri, message", [
    ("../iris-classifier", "is outside the API folder"),
    ("/srv/models/wine", "is outside the API folder"),
    ("model/../../kmeans", "is outside the API folder"),
    ("not-committed", "goes into the image, which holds the API folder's git-tracked files only"),
])
def test_a_local_model_the_image_would_not_hold_is_refused(uri, message):
    with pytest.raises(SpecError) as err:
        load_settings(raw_of(with_wine(user_config("dev"), {"predictor": {"model_uri": uri}})), "dev", "us-west-2")
    assert f"apis/{API}/api.yaml (stack dev): predictor.model_uri: {uri!r}" in str(err.value)
    assert message in str(err.value)


def test_partitions():
    assert [partition_of(r) for r in ("us-west-2", "cn-north-1", "us-gov-west-1")] == ["aws", "aws-cn", "aws-us-gov"]
    assert s3_scope(URI, partition_of("cn-north-1")).bucket_arn == f"arn:aws-cn:s3:::{BUCKET}"


def test_an_asyncapi_with_an_s3_model_is_refused_clearly():
    """The AsyncAPI worker gets no model role or cache volume in the cloud: refused, naming the file and field."""
    import copy

    from components.config import load_settings
    from myelin.spec import SpecError

    from .test_config_errors import raw_of

    raw = copy.deepcopy(raw_of("dev"))
    raw["apis"]["hyperparameter-search"] = {"overrides": {"predictor": {"model_uri": "s3://my-models/m/"},
                                                           "compute": {"model_disk": "1Gi"}}}
    with pytest.raises(SpecError, match=r"hyperparameter-search/api.yaml.*predictor.model_uri.*RealtimeAPI only"):
        load_settings(raw, "dev", "us-west-2")
