"""Bad stack config or a bad api.yaml stops the program before any resource is registered."""

from __future__ import annotations

import copy
import shutil

import pytest

from components.config import REPO_ROOT, StackConfigError, load_settings
from myelin.spec import SpecError

from .harness import run_program, stack_config, user_config


def raw_of(stack: str, config: dict | None = None) -> dict:
    config = user_config(stack) if config is None else config
    return {k.split(":", 1)[1]: v for k, v in config.items() if k.startswith("myelin:")}


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_committed_stacks_are_valid_once_the_user_sets_their_cidrs(stack):
    settings = load_settings(raw_of(stack), stack, stack_config(stack)["aws:region"])
    assert settings.apis


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_committed_placeholder_cidrs_stop_preview_with_what_to_put_there(stack):
    """The committed stack files hold RFC 5737 documentation ranges; as they are, preview stops and says why."""
    with pytest.raises(StackConfigError) as err:
        load_settings(raw_of(stack, stack_config(stack)), stack, "us-west-2")
    message = str(err.value)
    assert f"Pulumi.{stack}.yaml: myelin:cluster.endpoint_public_access_cidrs" in message
    assert "documentation range" in message and "the machines that run pulumi" in message


@pytest.mark.parametrize("field, value", [
    ("cluster", {"endpoint_public_access_cidrs": ["192.0.2.0/24"]}),
    ("cluster", {"endpoint_public_access_cidrs": ["10.1.0.0/16", "198.51.100.7/32"]}),
    ("ingress", {"public_source_cidrs": ["203.0.113.0/24"]}),
])
def test_documentation_ranges_are_refused_wherever_cidrs_go(field, value):
    raw = raw_of("dev")
    raw[field] = {**raw.get(field, {}), **value}
    with pytest.raises(StackConfigError, match=f"myelin:{field}.*documentation range"):
        load_settings(raw, "dev", "us-west-2")


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda c: c["network"].update(nat="two"), "myelin:network.nat"),
        (lambda c: c["network"].update(vpc_cidr="10.0.0.0/8"), "myelin:network.vpc_cidr"),
        (lambda c: c["cluster"]["cpu_nodes"].update(max_size=0), "myelin:cluster.cpu_nodes.max_size"),
        (lambda c: c["cluster"]["gpu_nodes"].update(ami_type="AL2_x86_64"), "myelin:cluster.gpu_nodes.ami_type"),
        (lambda c: c["cluster"].update(endpoint_public_access_cidrs=["0.0.0.0/0"]),
         "myelin:cluster.endpoint_public_access_cidrs"),
        (lambda c: c["cluster"]["system_nodes"].update(sise=2), "myelin:cluster.system_nodes.sise"),
        (lambda c: c.update(clutser={}), "myelin:clutser"),
        (lambda c: c["apis"].update({"no-such-api": {}}), "myelin:apis.no-such-api"),
        (lambda c: c.update(ingress={"domain": "x.example.com"}), "myelin:ingress"),
    ],
)
def test_bad_stack_config_names_the_file_and_field(mutate, field):
    raw = copy.deepcopy(raw_of("dev"))
    mutate(raw)
    with pytest.raises(StackConfigError) as err:
        load_settings(raw, "dev", "us-west-2")
    assert "Pulumi.dev.yaml" in str(err.value) and field in str(err.value)


def test_bad_override_names_the_api_folder_the_stack_file_and_field():
    raw = copy.deepcopy(raw_of("dev"))
    raw["apis"]["kmeans"] = {"overrides": {"autoscaling": {"min_replicas": 5, "max_replicas": 2}}}
    with pytest.raises(SpecError) as err:
        load_settings(raw, "dev", "us-west-2")
    msg = str(err.value)
    assert "apis/kmeans/api.yaml" in msg and "Pulumi.dev.yaml" in msg and "autoscaling" in msg


def test_min_replicas_zero_is_accepted_when_the_load_balancer_waits_long_enough():
    raw = copy.deepcopy(raw_of("dev"))
    raw["apis"]["kmeans"] = {"overrides": {"autoscaling": {"min_replicas": 0}}}  # serving.timeout 10s < 200 - 10
    settings = load_settings(raw, "dev", "us-west-2")
    assert next(d.spec for d in settings.apis if d.spec.name == "kmeans").autoscaling.min_replicas == 0


def test_scale_to_zero_needs_an_alb_idle_timeout_longer_than_the_hold():
    raw = copy.deepcopy(raw_of("dev"))
    raw["apis"]["kmeans"] = {"overrides": {"autoscaling": {"min_replicas": 0}, "serving": {"timeout": "5m"}}}
    with pytest.raises(SpecError, match=r"serving.timeout.*ingress.idle_timeout_seconds must be at least 310 "
                                        r"\(it is 200\)"):
        load_settings(raw, "dev", "us-west-2")


def test_every_api_needs_an_alb_idle_timeout_longer_than_its_timeout():
    """A prediction (or a stream's gap between items) may last serving.timeout: the ALB must not cut it first."""
    raw = copy.deepcopy(raw_of("dev"))
    raw["apis"]["kmeans"] = {"overrides": {"serving": {"timeout": "200s"}}}  # min_replicas 1
    with pytest.raises(SpecError, match=r"apis/kmeans/api.yaml.*serving.timeout.*a stream may pause between items.*"
                                        r"ingress.idle_timeout_seconds must be at least 201 \(it is 200\)"):
        load_settings(raw, "dev", "us-west-2")
    raw["apis"]["kmeans"] = {"overrides": {"serving": {"timeout": "199s"}}}
    settings = load_settings(raw, "dev", "us-west-2")
    assert next(d.spec for d in settings.apis if d.spec.name == "kmeans").serving.timeout.seconds == 199


def test_stabilization_windows_are_capped_at_the_hpa_limit():
    raw = copy.deepcopy(raw_of("dev"))
    raw["apis"]["kmeans"] = {"overrides": {"autoscaling": {"downscale_stabilization": "2h"}}}
    with pytest.raises(SpecError, match="autoscaling.downscale_stabilization.*at most 60m"):
        load_settings(raw, "dev", "us-west-2")


def test_gpu_api_without_gpu_nodes_is_refused():
    raw = copy.deepcopy(raw_of("prod"))
    del raw["cluster"]["gpu_nodes"]
    with pytest.raises(SpecError, match="compute.gpu"):
        load_settings(raw, "prod", "us-east-1")


def test_bad_api_yaml_names_the_folder(tmp_path):
    apis = tmp_path / "apis"
    shutil.copytree(REPO_ROOT / "apis" / "iris-classifier", apis / "iris-classifier",
                    ignore=shutil.ignore_patterns("__pycache__"))
    spec_file = apis / "iris-classifier" / "api.yaml"
    spec_file.write_text(spec_file.read_text().replace("cpu: 500m", "cpu: lots"))
    raw = {"apis": {"iris-classifier": {}}}
    with pytest.raises(SpecError) as err:
        load_settings(raw, "dev", "us-west-2", repo_root=tmp_path)
    assert str(spec_file) in str(err.value) and "compute.cpu" in str(err.value)


def test_program_registers_nothing_when_config_is_bad():
    config = user_config("dev")
    config["myelin:network"] = {**config["myelin:network"], "nat": "sometimes"}
    with pytest.raises(StackConfigError, match=r"Pulumi.dev.yaml: myelin:network.nat"):
        run_program("dev", config)
    # run_program raises before returning; check a fresh mocks instance saw nothing.
    from .pulumi_mocks import MyelinMocks
    import pulumi
    from pulumi.runtime import settings as pulumi_settings
    from pulumi.runtime.stack import run_pulumi_func
    from pulumi.runtime.sync_await import _sync_await
    import runpy
    from .harness import MAIN, apply_config, REPO, ensure_event_loop
    import os

    ensure_event_loop()
    mocks = MyelinMocks()
    pulumi_settings.ROOT.set(None)
    pulumi.runtime.set_mocks(mocks, project="myelin", stack="dev", preview=False)
    apply_config(config)

    def program():
        cwd = os.getcwd()
        os.chdir(REPO)
        try:
            runpy.run_path(str(MAIN), run_name="__main__")
        finally:
            os.chdir(cwd)

    with pytest.raises(StackConfigError):
        _sync_await(run_pulumi_func(program))
    assert mocks.resources == []


def _fields(model, prefix=""):
    from pydantic import BaseModel

    for name, info in model.model_fields.items():
        if name in ("stack", "region"):
            continue
        yield prefix + name
        ann = info.annotation
        for candidate in getattr(ann, "__args__", (ann,)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel) and candidate.__name__ != "ApiSelection":
                yield from _fields(candidate, "")


def test_every_stack_key_is_documented():
    from components.config import KNOWN_KEYS, StackConfig

    docs = (REPO_ROOT / "docs" / "reference" / "stack-config.md").read_text()
    project = (REPO_ROOT / "Pulumi.yaml").read_text()
    for key in KNOWN_KEYS:
        assert f"`{key}" in docs and f"myelin:{key}" in project, key
    for field in set(_fields(StackConfig)):
        assert field in docs, f"docs/reference/stack-config.md does not explain {field}"
