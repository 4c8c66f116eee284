"""A TrafficSplitter in a stack (issue 22, in the cloud): the splitter's path on the shared ALB forwards to its
APIs' Services by weight (the load balancer controller's weighted forward action), each API's pods answer that
path (MYELIN_ENDPOINT_ALIASES), and what the cloud cannot do (a shadow, mixed visibilities) is refused with the
file and the field. A mocked dev stack whose apis_dir holds kmeans, wine-classifier and a splitter over them."""

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


def test_a_shadow_is_refused_in_a_stack_naming_the_field(tmp_path):
    with pytest.raises(SpecError) as err:
        _load(tmp_path, SPLIT_YAML + "  - {name: iris-classifier, shadow: true}\n",
              apis={"kmeans": {}, "wine-classifier": {}, "iris-classifier": {}, SPLITTER: {}},
              also=("iris-classifier",))
    text = str(err.value)
    assert f"{SPLITTER}/api.yaml" in text and "apis[2].shadow" in text and "cannot copy" in text


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
