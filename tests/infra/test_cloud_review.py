"""The cloud path's second review (issue 19): scale from zero that really scales, nodes that really shrink,
held requests that survive a drain, and the smaller items. Each test names the upstream source it encodes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest

from components import capacity
from components.config import REPO_ROOT, load_settings
from myelin.spec import SpecError

from .harness import StackRun, run_program, user_config
from .scheduling import TemplateNode, misfit, pod_of, template_node

WINE = "wine-classifier"
S3_URI = "s3://myelin-models/models/wine-classifier/"


# -- S3 models without S3: the program lists the model through myelin.model_files (components/apis/model.py) ------


@dataclass(frozen=True)
class _Listing:
    version: str = "0" * 64
    total_bytes: int = 4096


@pytest.fixture(scope="module")
def fake_s3():
    """`pulumi up` lists each s3:// model; here the listing is canned (tests/infra/test_models_s3.py runs moto)."""
    import myelin.model_files as mf

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mf, "s3_client", lambda: object())
        mp.setattr(mf, "list_model", lambda uri, client: _Listing())
        yield


def with_s3_wine(stack: str, compute: dict) -> dict:
    config = copy.deepcopy(user_config(stack))
    config["myelin:apis"][WINE] = {"overrides": {"predictor": {"model_uri": S3_URI}, "compute": compute}}
    return config


def _raw(config: dict) -> dict:
    return {k.split(":", 1)[1]: v for k, v in config.items() if k.startswith("myelin:")}


#: The largest model volume each stack's pools take (components/capacity.py): dev CPU nodes have a 50 GiB disk.
DEV_CPU_ROOM = capacity.ephemeral_storage_gib(50, "AL2023_x86_64_STANDARD", "cpu")
PROD_GPU_ROOM = capacity.ephemeral_storage_gib(150, "AL2023_x86_64_NVIDIA", "gpu")


@pytest.fixture(scope="module")
def s3_runs(fake_s3) -> dict[str, StackRun]:
    """dev with wine-classifier's model from S3 on CPU nodes at the largest volume the stack config accepts;
    prod with it on GPU nodes, likewise."""
    return {
        "dev+s3": run_program("dev", with_s3_wine("dev", {"model_disk": f"{DEV_CPU_ROOM}Gi"})),
        "prod+s3-gpu": run_program("prod", with_s3_wine("prod", {"gpu": 1, "model_disk": f"{PROD_GPU_ROOM}Gi"})),
    }


# -- item 1: every pod fits a group the autoscaler can scale from zero ---------------------------------------------


def scalable_templates(run: StackRun) -> list[TemplateNode]:
    """The node each group that can scale from zero shows cluster-autoscaler while it has no node: from its ASG's
    tags only (the EKS API's labels and taints come on top for a managed group; this is the floor)."""
    tags_by_asg: dict[str, dict[str, str]] = {}
    for t in run.of_type("aws:autoscaling/tag:Tag"):
        tags_by_asg.setdefault(t.inputs["autoscalingGroupName"], {})[t.inputs["tag"]["key"]] = t.inputs["tag"]["value"]
    out = []
    for g in run.of_type("aws:eks/nodeGroup:NodeGroup"):
        scaling = g.inputs["scalingConfig"]
        if scaling["minSize"] == scaling["maxSize"]:
            continue  # fixed (the system group): never scaled, from zero or otherwise
        asg = g.outputs["resources"][0]["autoscalingGroups"][0]["name"]
        out.append(template_node(g.name, g.inputs["instanceTypes"][0], tags_by_asg.get(asg, {})))
    return out


def unschedulable_from_zero(run: StackRun) -> list[str]:
    templates = scalable_templates(run)
    assert templates
    problems = []
    for dep in run.k8s("Deployment"):
        if dep.inputs["metadata"]["namespace"] != "apis":
            continue
        pod = pod_of(dep.inputs)
        if not any(not misfit(pod, node) for node in templates):
            reasons = "; ".join(f"{n.group}: {', '.join(misfit(pod, n))}" for n in templates)
            problems.append(f"{run.stack}: {pod.name} fits no group that scales from zero ({reasons})")
    return problems


def test_every_api_pod_fits_a_group_that_scales_from_zero(run):
    assert not unschedulable_from_zero(run)


def test_pods_with_a_model_from_s3_fit_a_group_that_scales_from_zero(s3_runs):
    for stack_run in s3_runs.values():
        (dep,) = [d.inputs for d in stack_run.k8s("Deployment") if d.inputs["metadata"]["name"] == WINE]
        assert "ephemeral-storage" in dep["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
        assert not unschedulable_from_zero(stack_run)


def test_each_scalable_group_carries_its_ephemeral_storage(run):
    """The figure: 90% of the disk (the kubelet's nodefs.available eviction margin) less the OS and the images."""
    pools = {"cpu": run.config["myelin:cluster"]["cpu_nodes"], "gpu": run.config["myelin:cluster"]["gpu_nodes"]}
    for node in scalable_templates(run):
        pool = node.labels["myelin.dev/pool"]
        disk = pools[pool].get("disk_size_gib", 50 if pool == "cpu" else 100)
        ami = pools[pool].get("ami_type", "AL2023_x86_64_NVIDIA") if pool == "gpu" else "AL2023_x86_64_STANDARD"
        expected = int(disk * 0.9) - capacity.OS_RESERVE_GIB[ami] - capacity.IMAGES_RESERVE_GIB[pool]
        assert node.allocatable["ephemeral-storage"] == expected * 2**30, node.group
        assert expected < disk - 1  # below the node's own allocatable (kubeReserved ephemeral-storage: 1Gi)


def test_a_model_volume_larger_than_the_template_is_refused_by_the_stack_config():
    """What the config accepts is what the template admits: one GiB more than the room is refused."""
    with pytest.raises(SpecError, match=rf"compute.model_disk: {DEV_CPU_ROOM + 1}Gi does not fit on a node: "
                                        rf"myelin:cluster.cpu_nodes.disk_size_gib is 50, of which pods get {DEV_CPU_ROOM}Gi"):
        load_settings(_raw(with_s3_wine("dev", {"model_disk": f"{DEV_CPU_ROOM + 1}Gi"})), "dev", "us-west-2")
    settings = load_settings(_raw(with_s3_wine("dev", {"model_disk": f"{DEV_CPU_ROOM}Gi"})), "dev", "us-west-2")
    assert any(d.spec.name == WINE for d in settings.apis)


def test_ephemeral_storage_leaves_every_allowed_disk_some_room():
    for ami, pool, smallest in (("AL2023_x86_64_STANDARD", "cpu", 20), ("AL2023_x86_64_NVIDIA", "gpu", 40),
                                ("BOTTLEROCKET_x86_64_NVIDIA", "gpu", 40)):
        assert capacity.ephemeral_storage_gib(smallest, ami, pool) >= 1


# -- item 7: ASG tag resources are named by key ----------------------------------------------------------------------


def test_node_template_tags_are_named_by_key_and_keep_their_old_resources(run):
    from components.cluster import legacy_tag_names, tag_resource_name

    groups = {g.name: g for g in run.of_type("aws:eks/nodeGroup:NodeGroup")}
    asg_group = {g.outputs["resources"][0]["autoscalingGroups"][0]["name"]: name for name, g in groups.items()}
    tags = run.of_type("aws:autoscaling/tag:Tag")
    assert tags
    for t in tags:
        group = asg_group[t.inputs["autoscalingGroupName"]]
        key = t.inputs["tag"]["key"]
        assert t.name == tag_resource_name(group, key)
        labels = groups[group].inputs["labels"]
        legacy = legacy_tag_names(group, labels, bool(groups[group].inputs.get("taints")))
        if key.endswith("resources/ephemeral-storage"):
            assert t.name not in run.aliases  # new with this change: nothing to keep
        else:
            # The name it had when tags were numbered: `pulumi up` keeps the tag instead of replacing it.
            assert run.aliases[t.name] == [legacy[key]]


def test_adding_a_tag_renames_no_other_tag():
    from components.cluster import tag_resource_name, template_tags

    labels = {"myelin.dev/pool": "gpu", "myelin.dev/capacity": "spot"}
    before = {tag_resource_name("g", k) for k in template_tags(labels, True, 50)}
    after = {tag_resource_name("g", k) for k in template_tags({**labels, "a.example/first": "x"}, True, 50)}
    assert before < after and len(after - before) == 1


# -- item 2: Myelin's pods do not pin their nodes ------------------------------------------------------------------

SAFE_TO_EVICT = "cluster-autoscaler.kubernetes.io/safe-to-evict-local-volumes"


def _blocks_scale_down(pod_template: dict) -> list[str]:
    """cluster-autoscaler-1.34.1 utils/drain/drain.go HasBlockingLocalStorage: a hostPath, or an emptyDir not of
    medium Memory, not named in the annotation (split on ',')."""
    named = set(((pod_template["metadata"].get("annotations") or {}).get(SAFE_TO_EVICT) or "").split(","))
    return [v["name"] for v in pod_template["spec"].get("volumes") or []
            if ("hostPath" in v or ("emptyDir" in v and v["emptyDir"].get("medium") != "Memory"))
            and v["name"] not in named]


def _every_run(run, s3_runs):
    return [run, *s3_runs.values()]


def test_no_myelin_pod_blocks_scale_down_with_its_scratch_volumes(run, s3_runs):
    checked = 0
    for stack_run in _every_run(run, s3_runs):
        for dep in stack_run.k8s("Deployment"):
            template = dep.inputs["spec"]["template"]
            assert not _blocks_scale_down(template), (stack_run.stack, dep.name)
            annotation = (template["metadata"].get("annotations") or {}).get(SAFE_TO_EVICT)
            local = [v["name"] for v in template["spec"]["volumes"]
                     if "emptyDir" in v and v["emptyDir"].get("medium") != "Memory"]
            # Exactly the scratch volumes: no space after a comma (not trimmed upstream), nothing else named.
            assert annotation == ",".join(local), (dep.name, annotation)
            checked += 1
    assert checked >= 10


def test_the_model_cache_is_named_and_shared_memory_is_not(s3_runs):
    run = s3_runs["prod+s3-gpu"]
    (dep,) = [d.inputs for d in run.k8s("Deployment") if d.inputs["metadata"]["name"] == WINE]
    assert dep["spec"]["template"]["metadata"]["annotations"][SAFE_TO_EVICT] == "tmp,model-cache"
    assert "dshm" in {v["name"] for v in dep["spec"]["template"]["spec"]["volumes"]}


# -- item 4: the interceptor's route matches whatever case the ALB let through ---------------------------------------


def test_interceptor_routes_match_by_path_only(run):
    routes = run.k8s("InterceptorRoute")
    assert routes
    for route in routes:
        for rule in route.inputs["spec"]["rules"]:
            # Hosts are matched byte for byte by the add-on, case-insensitively by the ALB: none is set.
            assert "hosts" not in rule and rule["paths"], route.name


def test_prod_public_api_at_zero_keeps_the_host_rule_on_the_alb(prod):
    """The scope the route no longer repeats: the Ingress's host rule (domain) and Exact path."""
    (ingress,) = [i.inputs for i in prod.k8s("Ingress") if i.inputs["metadata"]["name"] == "sentence-embedding-via-interceptor"]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "api.example.com" and rule["http"]["paths"][0]["pathType"] == "Exact"


# -- item 3: a stopping interceptor keeps its held requests -------------------------------------------------------

RELEASE = "kubernetes:helm.sh/v3:Release"
#: kedacore/charts c4b92e9 (release v0.15.0) http-add-on/values.yaml, the interceptor's defaults the program's values
#: are merged over (Helm merges maps key by key: a key the program leaves out keeps the chart's value).
CHART_INTERCEPTOR_DEFAULTS = {
    "shutdownDelay": "5s", "drainTimeout": "30s", "terminationGracePeriodSeconds": 45,
    "resources": {"limits": {"cpu": 0.5, "memory": "64Mi"}, "requests": {"cpu": "250m", "memory": "20Mi"}},
    "pdb": {"enabled": True, "minAvailable": 0, "maxUnavailable": 1},
}


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def _seconds(duration: str) -> int:
    assert duration.endswith("s") and duration[:-1].isdigit(), duration
    return int(duration[:-1])


def _interceptor_values(run: StackRun) -> dict:
    (release,) = [r for r in run.of_type(RELEASE) if r.inputs["chart"] == "keda-add-ons-http"]
    return _merge(CHART_INTERCEPTOR_DEFAULTS, release.inputs["values"]["interceptor"])


def _held_seconds(run: StackRun) -> list[tuple[str, int, int]]:
    """(API, longest held request, its pre-stop) for every API scaled to zero: the route's request deadline."""
    out = []
    for route in run.k8s("InterceptorRoute"):
        out.append((route.inputs["metadata"]["name"], _seconds(route.inputs["spec"]["timeouts"]["request"]),
                    run.config.get("myelin:pods", {}).get("pre_stop_seconds", 10)))
    assert out
    return out


def test_the_interceptor_drains_the_longest_held_request(run):
    values = _interceptor_values(run)
    shutdown, drain, grace = (_seconds(values["shutdownDelay"]), _seconds(values["drainTimeout"]),
                              values["terminationGracePeriodSeconds"])
    for api, held, pre_stop in _held_seconds(run):
        assert drain >= held, f"{api}: held up to {held}s, the interceptor drains {drain}s"
        assert shutdown >= pre_stop  # accepting as long as an API pod does while the ALB deregisters it
    assert grace >= shutdown + drain  # the chart's rule: terminationGracePeriodSeconds >= shutdownDelay + drainTimeout


def test_the_alb_waits_for_a_draining_interceptor(run):
    grace = _interceptor_values(run)["terminationGracePeriodSeconds"]
    via = [i.inputs for i in run.k8s("Ingress") if i.inputs["metadata"]["name"].endswith("-via-interceptor")]
    assert via
    for ingress in via:
        attrs = ingress["metadata"]["annotations"]["alb.ingress.kubernetes.io/target-group-attributes"]
        delay = int(attrs.removeprefix("deregistration_delay.timeout_seconds="))
        assert grace <= delay <= 3600, (ingress["metadata"]["name"], delay)


def test_one_interceptor_always_serves_and_its_cpu_limit_is_chosen(run):
    values = _interceptor_values(run)
    release_values = next(r for r in run.of_type(RELEASE) if r.inputs["chart"] == "keda-add-ons-http").inputs["values"]
    pdb = values["pdb"]
    assert pdb["enabled"] is True and not pdb["minAvailable"]  # the template writes maxUnavailable only
    assert values["replicas"]["min"] - pdb["maxUnavailable"] >= 1
    assert release_values["interceptor"]["pdb"]["maxUnavailable"] == 1  # set by the program, not left to the chart
    # Set on purpose: not the chart's 0.5 left over from the merge.
    assert release_values["interceptor"]["resources"]["limits"]["cpu"] == values["resources"]["limits"]["cpu"] == "1"


def test_interceptor_pods_get_the_alb_readiness_gate(run):
    (keda_ns,) = [n.inputs for n in run.k8s("Namespace") if n.inputs["metadata"]["name"] == "keda"]
    assert keda_ns["metadata"]["labels"]["elbv2.k8s.aws/pod-readiness-gate-inject"] == "enabled"
    # The controller's pod webhook exists before the chart creates the first interceptor.
    keda_http = next(n for n in run.nodes if n.typ == RELEASE and n.name.endswith("-keda-add-ons-http"))
    lbc = next(n for n in run.nodes if n.typ == RELEASE and n.name.endswith("-aws-load-balancer-controller"))
    assert lbc in run.all_deps(keda_http)


def test_a_hold_no_drain_can_cover_is_refused():
    config = copy.deepcopy(user_config("dev"))
    config["myelin:ingress"] = {**config["myelin:ingress"], "idle_timeout_seconds": 4000}
    overrides = config["myelin:apis"]["image-classifier"]["overrides"]
    overrides["serving"] = {"timeout": "3590s"}
    with pytest.raises(SpecError, match=r"serving.timeout: .* with autoscaling.min_replicas 0: .* deregistration "
                                        r"delay, at most 3600s: use at most 3580s"):
        load_settings(_raw(config), "dev", "us-west-2")
    overrides["serving"] = {"timeout": "3580s"}
    load_settings(_raw(config), "dev", "us-west-2")


# -- item 7: the cold-start responder's Service comes before the routes that name it ----------------------------------


def test_routes_come_after_the_fallback_service(run):
    service = next(n for n in run.nodes if n.typ == "kubernetes:core/v1:Service" and n.name.endswith("-cold-start-service"))
    routes = [n for n in run.nodes if n.typ.startswith("kubernetes:") and n.name.endswith("-interceptorroute")]
    assert routes
    for route in routes:
        assert service in run.all_deps(route), route.name


# -- item 5: the AsyncAPI gateway is autoscaled, never below two ---------------------------------------------------


def test_the_gateway_scales_on_cpu_from_two(run):
    gateways = run.api_objects("Deployment", "gateway")
    assert gateways
    objects = {(o.inputs["kind"], o.inputs["metadata"]["name"]): o.inputs for o in run.k8s("ScaledObject")}
    for gw in gateways:
        name = gw.inputs["metadata"]["name"]
        assert "replicas" not in gw.inputs["spec"]  # the HPA owns it
        so = objects[("ScaledObject", f"{name}-gateway")]
        spec = so["spec"]
        assert spec["scaleTargetRef"]["name"] == name and spec["minReplicaCount"] >= 2
        assert spec["maxReplicaCount"] > spec["minReplicaCount"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "cpu" and trigger["metricType"] == "Utilization"
        assert 0 < int(trigger["metadata"]["value"]) <= 100
        # Utilization is of the request: the gateway's pods request CPU.
        assert gw.inputs["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
        assert spec["advanced"]["horizontalPodAutoscalerConfig"]["name"] == f"{name}-gateway"
        # Its PodDisruptionBudget lets one go: with at least two, one always serves.
        (pdb,) = [p.inputs for p in run.api_objects("PodDisruptionBudget", "gateway") if p.inputs["metadata"]["name"] == name]
        assert pdb["spec"]["maxUnavailable"] == 1 < spec["minReplicaCount"]
        node = run.node("kubernetes:keda.sh/v1alpha1:ScaledObject", f"{name}-gateway-scaledobject")
        assert run.node("kubernetes:apps/v1:Deployment", f"{name}-gateway") in run.all_deps(node)


# -- item 6: symlinks in an image's context --------------------------------------------------------------------------


def _repo_with_api(tmp_path):
    import shutil
    import subprocess

    repo = tmp_path / "repo"
    api = repo / "apis" / "kmeans"
    shutil.copytree(REPO_ROOT / "apis" / "kmeans", api, ignore=shutil.ignore_patterns("__pycache__", "*.joblib"))
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    return repo, api


def _commit_all(repo):
    import subprocess

    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)


def test_a_symlink_out_of_the_repository_is_refused_naming_the_file(tmp_path):
    from components.image import ImageContextError, content_tag, context_files, stage

    repo, api = _repo_with_api(tmp_path)
    secret = tmp_path / "credentials"  # on the build machine, outside the checkout
    secret.write_text("aws_secret_access_key = do-not-ship\n")
    (api / "model.bin").symlink_to(secret)
    _commit_all(repo)
    for call in (lambda: context_files(api), lambda: content_tag(api, {}), lambda: stage(api, tmp_path / "staged")):
        with pytest.raises(ImageContextError, match=rf"{api / 'model.bin'}: a symlink to {secret}, outside the repository"):
            call()
    assert not (tmp_path / "staged" / "model.bin").exists()


def test_a_symlink_out_of_the_repository_stops_the_stack_config(tmp_path):
    import shutil

    repo, api = _repo_with_api(tmp_path)
    (tmp_path / "outside.txt").write_text("x")
    (api / "extra.txt").symlink_to(tmp_path / "outside.txt")
    _commit_all(repo)
    shutil.copy(REPO_ROOT / "Pulumi.dev.yaml", repo / "Pulumi.dev.yaml")
    raw = {"apis": {"kmeans": None}, "cluster": {"endpoint_public_access_cidrs": ["198.18.0.0/24"]}}
    with pytest.raises(SpecError, match=rf"apis/kmeans/api.yaml \(stack dev\): {api / 'extra.txt'}: a symlink to "):
        load_settings(raw, "dev", "us-west-2", repo_root=repo)


def test_a_symlink_inside_the_repository_is_staged_as_its_content(tmp_path):
    from components.image import content_tag, context_files, stage

    repo, api = _repo_with_api(tmp_path)
    shared = repo / "shared"
    (shared / "weights").mkdir(parents=True)
    (shared / "weights" / "w.json").write_text('{"w": 1}')
    (shared / "labels.txt").write_text("a\nb\n")
    (api / "labels.txt").symlink_to("../../shared/labels.txt")  # relative, as git stores it
    (api / "weights").symlink_to(shared / "weights")  # a directory
    _commit_all(repo)
    files = context_files(api)
    assert {"labels.txt", "weights/w.json"} <= set(files)
    staged = stage(api, tmp_path / "staged")
    assert (staged / "labels.txt").read_text() == "a\nb\n" and not (staged / "labels.txt").is_symlink()
    assert (staged / "weights" / "w.json").read_text() == '{"w": 1}' and not (staged / "weights").is_symlink()
    # The tag follows the content the links point to.
    before = content_tag(api, {})
    (shared / "labels.txt").write_text("a\nb\nc\n")
    assert content_tag(api, {}) != before


def test_a_dangling_or_looping_symlink_is_refused(tmp_path):
    from components.image import ImageContextError, context_files

    repo, api = _repo_with_api(tmp_path)
    (api / "gone").symlink_to(api / "nothing-here")
    _commit_all(repo)
    with pytest.raises(ImageContextError, match="does not exist"):
        context_files(api)
    (api / "gone").unlink()
    (api / "loop").symlink_to("..")
    _commit_all(repo)
    with pytest.raises(ImageContextError, match="a loop"):
        context_files(api)


# -- item 7: a model under a customer-managed KMS key -----------------------------------------------------------------

KEY = "arn:aws:kms:us-west-2:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def with_kms(key: str | None = KEY) -> dict:
    config = with_s3_wine("dev", {"model_disk": "1Gi"})
    if key is not None:
        config["myelin:apis"][WINE]["model_kms_key_arn"] = key
    return config


@pytest.fixture(scope="module")
def kms_run(fake_s3) -> StackRun:
    return run_program("dev", with_kms())


def _model_policy(run: StackRun) -> dict:
    import json

    return json.loads(run.named("aws:iam/rolePolicy:RolePolicy", f"{WINE}-model-irsa").inputs["policy"])


def test_a_model_under_a_kms_key_may_decrypt_with_that_key_through_s3_only(kms_run):
    statements = _model_policy(kms_run)["Statement"]
    (kms,) = [st for st in statements if st.get("Sid") == "DecryptModel"]
    assert kms["Action"] == ["kms:Decrypt"] and kms["Resource"] == [KEY]
    assert kms["Condition"]["StringEquals"] == {"kms:ViaService": "s3.us-west-2.amazonaws.com"}
    # The object's ARN (no Bucket Key) or the bucket's (with one): only the model's.
    assert kms["Condition"]["StringLike"]["kms:EncryptionContext:aws:s3:arn"] == [
        "arn:aws:s3:::myelin-models", "arn:aws:s3:::myelin-models/models/wine-classifier/*"]


def test_without_a_key_the_role_has_no_kms(fake_s3, s3_runs):
    statements = _model_policy(s3_runs["dev+s3"])["Statement"]
    assert not any("kms" in str(st.get("Action")).lower() for st in statements)


@pytest.fixture(scope="module")
def policies():
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("myelin_policies", REPO_ROOT / "policy" / "myelin_policies.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["myelin_policies"] = module
    spec.loader.exec_module(module)
    return module


def test_the_policy_pack_passes_the_kms_grant(policies, kms_run):
    from .test_policy import resources, violations

    assert violations(policies, resources(kms_run)) == []


KMS_OVER_BROAD = [
    ("any key", lambda st: st.update(Resource=["*"]), "no wildcard, no alias"),
    ("an alias", lambda st: st.update(Resource=["arn:aws:kms:us-west-2:123456789012:alias/models"]), "no wildcard"),
    ("not through S3", lambda st: st["Condition"].pop("StringEquals"), "without kms:ViaService"),
    ("any object", lambda st: st["Condition"].pop("StringLike"), "without a kms:EncryptionContext"),
    ("another bucket", lambda st: st["Condition"]["StringLike"].update(
        {"kms:EncryptionContext:aws:s3:arn": ["arn:aws:s3:::other"]}), "reaches beyond the model"),
    ("a parent prefix", lambda st: st["Condition"]["StringLike"].update(
        {"kms:EncryptionContext:aws:s3:arn": ["arn:aws:s3:::myelin-models/models/*"]}), "reaches beyond the model"),
    ("encrypt too", lambda st: st.update(Action=["kms:Decrypt", "kms:Encrypt"]), "only kms:Decrypt"),
]


@pytest.mark.parametrize("label, mutate, message", KMS_OVER_BROAD, ids=[k[0] for k in KMS_OVER_BROAD])
def test_the_policy_pack_fails_a_broader_kms_grant(policies, kms_run, label, mutate, message):
    import json

    from .test_policy import resources, violations

    items = resources(kms_run)
    for typ, props in items:
        if typ == "aws:iam/rolePolicy:RolePolicy" and props.get("name") == f"myelin-model-{WINE}":
            document = json.loads(props["policy"])
            mutate(next(st for st in document["Statement"] if st.get("Sid") == "DecryptModel"))
            props["policy"] = json.dumps(document)
    found = violations(policies, items)
    assert any(v.startswith("model-roles-least-privilege: ") and message in v for v in found), found


def test_a_kms_key_without_an_s3_model_or_not_a_key_arn_is_refused():
    from components.config import StackConfigError

    config = copy.deepcopy(user_config("dev"))
    config["myelin:apis"]["kmeans"]["model_kms_key_arn"] = KEY
    with pytest.raises(StackConfigError, match=r"myelin:apis.kmeans.model_kms_key_arn: API kmeans has no s3:// "):
        load_settings(_raw(config), "dev", "us-west-2")
    with pytest.raises(StackConfigError, match=r"myelin:apis.wine-classifier.model_kms_key_arn"):
        load_settings(_raw(with_kms("alias/models")), "dev", "us-west-2")


# -- item 7: the docs give the exact OIDC subject every AWS job presents -------------------------------------------


def _oidc_subjects() -> dict[str, str]:
    """job -> the `sub` claim GitHub puts in its OIDC token (GitHub docs, "About security hardening with OpenID
    Connect", example subject claims): `environment:<name>` for a job with an environment, else `pull_request`
    for a pull_request-triggered workflow, else `ref:<ref>`."""
    import yaml

    out = {}
    for path in sorted((REPO_ROOT / ".github" / "workflows").glob("*.yml")):
        workflow = yaml.safe_load(path.read_text())
        triggers = workflow.get(True) or workflow.get("on")  # YAML 1.1 reads `on` as True
        for job_name, job in workflow["jobs"].items():
            if not any("role-to-assume" in (step.get("with") or {}) for step in job.get("steps", [])):
                continue
            env = job.get("environment")
            env = env.get("name") if isinstance(env, dict) else env
            if env:
                sub = f"environment:{env}"
            elif "pull_request" in triggers:
                sub = "pull_request"
            else:
                sub = "ref:refs/heads/main"
            out[f"{path.name} {job_name}"] = f"repo:<owner>/<repo>:{sub}"
    return out


def test_the_docs_name_every_oidc_subject_the_aws_jobs_present():
    subjects = _oidc_subjects()
    assert subjects == {"deploy.yml dev": "repo:<owner>/<repo>:environment:dev",
                        "deploy.yml prod": "repo:<owner>/<repo>:environment:production",
                        "preview.yml preview": "repo:<owner>/<repo>:pull_request"}
    section = (REPO_ROOT / "docs" / "cicd.md").read_text()
    for job, subject in subjects.items():
        assert f"`{subject}`" in section, f"docs/cicd.md: the trust policy subject of {job}"


def test_the_docs_state_the_ephemeral_storage_figures_the_code_uses():
    readme = (REPO_ROOT / "docs" / "scale-to-zero.md").read_text()
    cpu = capacity.ephemeral_storage_gib(50, "AL2023_x86_64_STANDARD", "cpu")
    gpu = capacity.ephemeral_storage_gib(100, "AL2023_x86_64_NVIDIA", "gpu")
    assert f"{cpu} GiB for the default 50 GiB CPU disk" in readme and f"{gpu} GiB for the default 100 GiB GPU disk" in readme
    assert (capacity.OS_RESERVE_GIB, capacity.IMAGES_RESERVE_GIB) == (
        {"AL2023_x86_64_STANDARD": 4, "AL2023_x86_64_NVIDIA": 10, "BOTTLEROCKET_x86_64_NVIDIA": 0}, {"cpu": 10, "gpu": 20})
