"""A TrafficSplitter in a stack (issue 22, in the cloud): the splitter's path on the shared ALB forwards to its
APIs' Services by weight (the load balancer controller's weighted forward action), each API's pods answer that
path (MYELIN_ENDPOINT_ALIASES) and copy it to the splitter's shadow (MYELIN_SHADOW_TARGETS, with the
NetworkPolicies that let exactly those pods talk), and what the cloud cannot do (mixed visibilities) is refused
with the file and the field. A mocked dev stack whose apis_dir holds kmeans, wine-classifier and a splitter over
them (and iris-classifier as the shadow of a second stack's splitter)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import kubernetes_validate
import pytest

from components.config import StackConfigError, load_settings
from components.versions import KUBERNETES_VERSION
from myelin.spec import SpecError

from .harness import REPO, run_program, user_config
from .test_k8s_schemas import manifest
from .test_policy import policies, resources, violations  # noqa: F401 - the fixture

SPLITTER = "wine-split"
WEIGHTS = {"kmeans": 30, "wine-classifier": 70}


def _tree(root: Path, splitter_yaml: str, also: tuple[str, ...] = ()) -> Path:
    apis = root / "apis"
    for name in [*WEIGHTS, *also]:
        shutil.copytree(REPO / "apis" / name, apis / name, ignore=shutil.ignore_patterns("__pycache__"))
    (apis / SPLITTER).mkdir(parents=True)
    (apis / SPLITTER / "api.yaml").write_text(splitter_yaml)
    return apis


SPLIT_YAML = (f"kind: TrafficSplitter\nname: {SPLITTER}\nnetworking:\n  endpoint: /wine\napis:\n"
              + "".join(f"  - {{name: {n}, weight: {w}}}\n" for n, w in WEIGHTS.items()))


@pytest.fixture(scope="module")
def split_run(tmp_path_factory):
    apis = _tree(tmp_path_factory.mktemp("split"), SPLIT_YAML)
    config = user_config("dev")
    config["myelin:apis_dir"] = str(apis)
    config["myelin:apis"] = {name: {} for name in [*WEIGHTS, SPLITTER]}
    return run_program("dev", config)


def _k8s(run, kind, name):
    return [manifest(r) for r in run.resources if r.inputs.get("kind") == kind
            and (r.inputs.get("metadata") or {}).get("name") == name]


def test_the_splitters_ingress_weighs_its_apis_services(split_run):
    [ingress] = _k8s(split_run, "Ingress", SPLITTER)
    annotations = ingress["metadata"]["annotations"]
    action = json.loads(annotations[f"alb.ingress.kubernetes.io/actions.{SPLITTER}"])
    assert action == {"type": "forward", "forwardConfig": {"targetGroups": [
        {"serviceName": name, "servicePort": "80", "weight": weight} for name, weight in WEIGHTS.items()]}}
    # Each Service named in the action exists, in the Ingress's namespace, with port 80.
    for name in WEIGHTS:
        [service] = _k8s(split_run, "Service", name)
        assert service["metadata"]["namespace"] == ingress["metadata"]["namespace"]
        assert [p["port"] for p in service["spec"]["ports"]] == [80]
    # On the same load balancer as the APIs (their IngressGroup).
    [api_ingress] = _k8s(split_run, "Ingress", "kmeans")
    assert annotations["alb.ingress.kubernetes.io/group.name"] == \
        api_ingress["metadata"]["annotations"]["alb.ingress.kubernetes.io/group.name"]
    [rule] = ingress["spec"]["rules"]
    assert rule["http"]["paths"] == [{"path": "/wine", "pathType": "Exact", "backend": {"service": {
        "name": SPLITTER, "port": {"name": "use-annotation"}}}}]
    kubernetes_validate.validate(ingress, KUBERNETES_VERSION, strict=True)
    assert split_run.outputs["endpoints"][SPLITTER].endswith("/wine")


def test_each_weighted_api_answers_the_splitters_path(split_run):
    for name in WEIGHTS:
        [deployment] = _k8s(split_run, "Deployment", name)
        env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["MYELIN_ENDPOINT_ALIASES"] == f"{SPLITTER}=/wine"
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_an_api_no_splitter_weighs_gets_no_alias(dev):
    for rec in dev.api_deployments():
        env = {e["name"] for e in manifest(rec)["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert "MYELIN_ENDPOINT_ALIASES" not in env


def test_the_split_stack_passes_every_policy(policies, split_run):  # noqa: F811
    assert violations(policies, resources(split_run)) == []


def _load(tmp_path, splitter_yaml, apis=None, also=()):
    root = _tree(tmp_path, splitter_yaml, also)
    raw = {"apis": apis or {name: {} for name in [*WEIGHTS, SPLITTER]}, "apis_dir": str(root)}
    return load_settings(raw, "dev", "us-west-2")


def test_a_stack_splitter_is_loaded_with_the_aliases(tmp_path):
    settings = _load(tmp_path, SPLIT_YAML)
    assert [s.spec.name for s in settings.splitters] == [SPLITTER]
    assert settings.aliases_of("kmeans") == ((SPLITTER, "/wine"),)
    assert {d.spec.name for d in settings.apis} == set(WEIGHTS)


def test_a_stack_splitter_with_a_shadow_is_loaded(tmp_path):
    settings = _load(tmp_path, SHADOW_YAML, apis={"kmeans": {}, "wine-classifier": {}, SHADOW: {}, SPLITTER: {}},
                     also=(SHADOW,))
    for name in WEIGHTS:
        assert [(s, spec.name) for s, spec in settings.shadows_of(name)] == [(SPLITTER, SHADOW)]
    assert settings.shadows_of(SHADOW) == ()
    assert [spec.name for spec in settings.shadow_sources_of(SHADOW)] == sorted(WEIGHTS)
    assert settings.shadow_sources_of("kmeans") == ()


def test_a_shadow_the_stack_does_not_deploy_is_refused(tmp_path):
    with pytest.raises(StackConfigError) as err:
        _load(tmp_path, SHADOW_YAML, also=(SHADOW,))
    assert "myelin:apis" in str(err.value) and SHADOW in str(err.value)


def test_a_shadow_scaled_to_zero_is_refused_naming_the_field(tmp_path):
    apis = {"kmeans": {}, "wine-classifier": {}, SHADOW: {"overrides": {"autoscaling": {"min_replicas": 0}}},
            SPLITTER: {}}
    with pytest.raises(SpecError) as err:
        _load(tmp_path, SHADOW_YAML, apis=apis, also=(SHADOW,))
    text = str(err.value)
    assert f"{SPLITTER}/api.yaml" in text and "apis[2].name" in text and "min_replicas 0" in text
    assert "a shadow receives a copy of every request" in text


def test_a_shadow_that_does_not_speak_myelin_is_refused(tmp_path):
    apis = {"kmeans": {}, "wine-classifier": {}, SHADOW: {"overrides": {"networking": {"protocols": ["oip"]}}},
            SPLITTER: {}}
    with pytest.raises(SpecError) as err:
        _load(tmp_path, SHADOW_YAML, apis=apis, also=(SHADOW,))
    assert "apis[2].name" in str(err.value) and "myelin protocol" in str(err.value)


def test_a_shadow_of_another_visibility_is_accepted(tmp_path):
    """The copies go from pod to pod inside the cluster, not through a load balancer."""
    apis = {"kmeans": {}, "wine-classifier": {},
            SHADOW: {"overrides": {"networking": {"visibility": "internal"}}}, SPLITTER: {}}
    settings = _load(tmp_path, SHADOW_YAML, apis=apis, also=(SHADOW,))
    assert [spec.networking.visibility for _, spec in settings.shadows_of("kmeans")] == ["internal"]


# -- the shadow in a stack -----------------------------------------------------------------------------------------

SHADOW = "iris-classifier"
SHADOW_YAML = SPLIT_YAML + f"  - {{name: {SHADOW}, shadow: true}}\n"


@pytest.fixture(scope="module")
def shadow_run(tmp_path_factory):
    apis = _tree(tmp_path_factory.mktemp("shadow"), SHADOW_YAML, also=(SHADOW,))
    config = user_config("dev")
    config["myelin:apis_dir"] = str(apis)
    config["myelin:apis"] = {name: {} for name in [*WEIGHTS, SHADOW, SPLITTER]}
    return run_program("dev", config)


def _env(deployment) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_each_weighted_api_copies_to_the_shadows_service(shadow_run):
    from myelin.settings import Settings

    [service] = _k8s(shadow_run, "Service", SHADOW)
    namespace = service["metadata"]["namespace"]
    assert [p["port"] for p in service["spec"]["ports"]] == [80]
    for name in WEIGHTS:
        [deployment] = _k8s(shadow_run, "Deployment", name)
        env = _env(deployment)
        assert env["MYELIN_ENDPOINT_ALIASES"] == f"{SPLITTER}=/wine"
        assert env["MYELIN_SHADOW_TARGETS"] == (
            f"{SPLITTER}=http://{SHADOW}.{namespace}.svc.cluster.local./{SHADOW};api={SHADOW};timeout=10;max_body=65536")
        # The runtime reads back what the cluster wrote (settings.py), as `myelin serve` in the pod does.
        [target] = Settings.from_env(env).shadow_targets
        assert (target.splitter, target.shadow, target.timeout, target.max_body) == (SPLITTER, SHADOW, 10.0, 65536)
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    # The shadow copies to nobody, and answers its own endpoint only (it is not weighed).
    env = _env(_k8s(shadow_run, "Deployment", SHADOW)[0])
    assert "MYELIN_SHADOW_TARGETS" not in env and "MYELIN_ENDPOINT_ALIASES" not in env
    # It keeps its own Ingress; the splitter's action weighs only the weighted APIs.
    assert _k8s(shadow_run, "Ingress", SHADOW)
    [ingress] = _k8s(shadow_run, "Ingress", SPLITTER)
    action = json.loads(ingress["metadata"]["annotations"][f"alb.ingress.kubernetes.io/actions.{SPLITTER}"])
    assert [t["serviceName"] for t in action["forwardConfig"]["targetGroups"]] == list(WEIGHTS)


def _pods_of(peer: dict) -> str | None:
    """The API whose pods (in the policy's own namespace) a NetworkPolicy peer selects; None for other peers."""
    if "namespaceSelector" in peer or "ipBlock" in peer:
        return None
    return peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name")


def test_network_policies_let_exactly_the_weighted_pods_reach_the_shadows(shadow_run):
    [shadow_policy] = _k8s(shadow_run, "NetworkPolicy", SHADOW)
    kubernetes_validate.validate(shadow_policy, KUBERNETES_VERSION, strict=True)
    admitted = [(_pods_of(p), rule["ports"]) for rule in shadow_policy["spec"]["ingress"] for p in rule["from"]
                if _pods_of(p)]
    assert sorted(admitted, key=lambda a: a[0]) == [(name, [{"port": 8080, "protocol": "TCP"}]) for name in WEIGHTS]
    for name in WEIGHTS:
        [policy] = _k8s(shadow_run, "NetworkPolicy", name)
        kubernetes_validate.validate(policy, KUBERNETES_VERSION, strict=True)
        out = [rule["ports"] for rule in policy["spec"]["egress"] if any(_pods_of(p) for p in rule.get("to", []))]
        assert out == [[{"port": 8080, "protocol": "TCP"}]]
        assert {_pods_of(p) for rule in policy["spec"]["egress"] for p in rule.get("to", [])} - {None} == {SHADOW}
        # A weighted API admits no other API's pods.
        assert not any(_pods_of(p) for rule in policy["spec"]["ingress"] for p in rule["from"])


def test_the_shadow_stack_passes_every_policy(policies, shadow_run):  # noqa: F811
    assert violations(policies, resources(shadow_run)) == []


def test_an_api_the_stack_does_not_deploy_is_refused(tmp_path):
    with pytest.raises(StackConfigError) as err:
        _load(tmp_path, SPLIT_YAML, apis={"kmeans": {}, SPLITTER: {}})
    assert "myelin:apis" in str(err.value) and "wine-classifier" in str(err.value)


def test_mixed_visibilities_are_refused(tmp_path):
    with pytest.raises(SpecError) as err:
        _load(tmp_path, SPLIT_YAML.replace("  endpoint: /wine\n", "  endpoint: /wine\n  visibility: internal\n"))
    assert "apis[0].name" in str(err.value) and "visibility" in str(err.value)


def test_a_canary_or_scaled_to_zero_api_is_refused_with_the_stacks_overrides(tmp_path):
    apis = {"kmeans": {"overrides": {"autoscaling": {"min_replicas": 0}}}, "wine-classifier": {}, SPLITTER: {}}
    with pytest.raises(SpecError) as err:
        _load(tmp_path, SPLIT_YAML, apis=apis)
    assert f"{SPLITTER}/api.yaml" in str(err.value) and "min_replicas 0" in str(err.value)
