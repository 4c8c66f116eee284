"""Canary releases of a RealtimeAPI on Argo Rollouts (issue 22 item 2), in the mocked dev and prod stacks (their
iris-classifier has `rollout.strategy: canary`): the objects, their order, what Pulumi leaves to the controllers,
the policy pack on the new kinds, and the refusals."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest

from components import versions
from components.apis.canary import MANAGED_ACTIONS_ANNOTATION, action_annotation
from myelin.spec import SpecError, spec_from_dict

from .harness import unwrap_secrets
from .test_k8s_schemas import CRD_SCHEMAS, manifest
from .test_policy import policies, resources, violations  # noqa: F401 - the fixture

API = "iris-classifier"
ROLLOUT = "kubernetes:argoproj.io/v1alpha1:Rollout"
TEMPLATE = "kubernetes:argoproj.io/v1alpha1:AnalysisTemplate"


def _k8s(run, kind: str, name: str):
    return next(r for r in run.resources if r.inputs.get("kind") == kind
                and (r.inputs.get("metadata") or {}).get("name") == name)


def _node(run, rec):
    return next(n for n in run.nodes if n.name == rec.name and n.typ == rec.typ)


def test_the_canary_api_runs_under_a_rollout_with_ping_pong_on_the_alb(run):
    assert not [r for r in run.resources if r.inputs.get("kind") == "Deployment"
                and r.inputs["metadata"]["name"] == API], "a canary API has no Deployment"
    rollout = manifest(_k8s(run, "Rollout", API))
    canary = rollout["spec"]["strategy"]["canary"]
    assert canary["pingPong"] == {"pingService": f"{API}-ping", "pongService": f"{API}-pong"}
    assert canary["trafficRouting"] == {"alb": {"ingress": API, "rootService": API, "servicePort": 80}}
    assert canary["maxUnavailable"] == 0
    assert canary["steps"][:4] == [{"setWeight": 10}, {"pause": {"duration": "300s"}}, {"setWeight": 50},
                                   {"pause": {"duration": "300s"}}]
    hash_arg = [{"name": "canary-hash", "valueFrom": {"podTemplateHashValue": "Latest"}}]
    assert canary["steps"][4] == {"analysis": {"templates": [{"templateName": f"{API}-canary-gate"}],
                                               "args": hash_arg}}
    assert canary["analysis"] == {"templates": [{"templateName": f"{API}-canary-watch"}], "args": hash_arg,
                                  "startingStep": 1}
    # KEDA scales the Rollout: Pulumi sets no replica count it would fight over.
    assert "replicas" not in rollout["spec"]
    scaled = manifest(_k8s(run, "ScaledObject", API))
    assert scaled["spec"]["scaleTargetRef"] == {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": API}
    # The pods are the API's pods: the same template a Deployment would have (probes, preStop, hardening).
    container = rollout["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert rollout["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": API,
                                                          "app.kubernetes.io/instance": API}


def test_pulumi_leaves_the_weights_and_selectors_to_argo(run):
    ingress = _k8s(run, "Ingress", API)
    obj = manifest(ingress)
    # Every path of the API (its endpoint, and /v2/models/iris-classifier: it speaks oip too) goes to the one action
    # Argo weighs, so the canary gets its share of every protocol's traffic.
    paths = obj["spec"]["rules"][0]["http"]["paths"]
    assert [p["path"] for p in paths] == [f"/{API}", f"/v2/models/{API}"]
    for path in paths:
        assert path["backend"]["service"] == {"name": API, "port": {"name": "use-annotation"}}
    action = json.loads(obj["metadata"]["annotations"][action_annotation_name()])
    assert action == {"type": "forward", "forwardConfig": {"targetGroups": [
        {"serviceName": f"{API}-ping", "servicePort": "80", "weight": 100},
        {"serviceName": f"{API}-pong", "servicePort": "80", "weight": 0}]}}
    assert sorted(run.ignore_changes[ingress.name]) == sorted([
        f'metadata.annotations["{action_annotation_name()}"]', f'metadata.annotations["{MANAGED_ACTIONS_ANNOTATION}"]'])
    for suffix in ("ping", "pong"):
        service = _k8s(run, "Service", f"{API}-{suffix}")
        assert run.ignore_changes[service.name] == ["spec.selector"]
        assert manifest(service)["spec"]["selector"] == {"app.kubernetes.io/name": API,
                                                          "app.kubernetes.io/instance": API}
    # Nothing else Argo writes is set, and no other API's objects ignore anything of theirs.
    rollout = _k8s(run, "Rollout", API)
    assert rollout.name not in run.ignore_changes


def action_annotation_name() -> str:
    return f"alb.ingress.kubernetes.io/actions.{API}"


def test_argo_rollouts_comes_first_and_goes_last(run):
    release = next(r for r in run.of_type("kubernetes:helm.sh/v3:Release") if r.inputs["chart"] == "argo-rollouts")
    assert release.inputs["version"] == versions.ARGO_ROLLOUTS.version == "2.41.0"
    assert release.inputs["values"]["installCRDs"] is True
    release_node = _node(run, release)
    for kind, name in (("Rollout", API), ("AnalysisTemplate", f"{API}-canary-watch"),
                       ("AnalysisTemplate", f"{API}-canary-gate")):
        node = _node(run, _k8s(run, kind, name))
        assert release_node in run.all_deps(node), f"{kind} {name} does not wait for the CRDs and controller"
    rollout = _node(run, _k8s(run, "Rollout", API))
    deps = run.all_deps(rollout)
    for kind, name in (("Service", f"{API}-ping"), ("Service", f"{API}-pong"),
                       ("AnalysisTemplate", f"{API}-canary-watch"), ("AnalysisTemplate", f"{API}-canary-gate")):
        assert _node(run, _k8s(run, kind, name)) in deps, f"the Rollout is created before {kind} {name}"


def test_rollout_and_templates_validate_against_the_pinned_crds_and_a_typo_fails(run):
    for kind in ("Rollout", "AnalysisTemplate"):
        recs = [r for r in run.resources if r.inputs.get("kind") == kind]
        assert recs
        schema = json.loads(CRD_SCHEMAS[("argoproj.io/v1alpha1", kind)].read_text())
        for rec in recs:
            jsonschema.Draft202012Validator(schema).validate(manifest(rec))
    schema = json.loads(CRD_SCHEMAS[("argoproj.io/v1alpha1", "Rollout")].read_text())
    broken = manifest(_k8s(run, "Rollout", API))
    broken["spec"]["strategy"]["canary"]["trafficRouting"]["alb"]["servicePorts"] = 80
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(broken)
    broken = manifest(_k8s(run, "Rollout", API))
    broken["spec"]["strategy"]["canary"]["steps"][1]["pause"]["duration"] = [5]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(broken)


def test_the_policy_pack_judges_rollouts_and_analysis_templates(policies, run):  # noqa: F811
    items = resources(run)
    assert violations(policies, items) == []
    broken = copy.deepcopy(items)
    for typ, props in broken:
        if typ == "kubernetes:argoproj.io/v1alpha1:Rollout":
            props["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
        if typ == "kubernetes:argoproj.io/v1alpha1:AnalysisTemplate":
            props["spec"]["metrics"][0]["provider"]["prometheus"]["query"] = "sum(rate(container_cpu_usage_seconds_total[1m]))"
    found = violations(policies, broken)
    assert f"rollout-pods-hardened: Deployment {API} (Rollout) container predictor: root file system must be read-only" \
        in found
    assert any("canary-analysis-own-metrics" in f and "container_cpu_usage_seconds_total" in f for f in found)
    # Without a NetworkPolicy of its own, the Rollout's pods are reported as a Deployment's would be.
    no_policy = [(t, p) for t, p in copy.deepcopy(items)
                 if not (t.endswith(":NetworkPolicy") and p["metadata"]["name"] == API)]
    assert any(f"{API}: no NetworkPolicy admits its traffic" in f for f in violations(policies, no_policy))


def test_analysis_metrics_of_the_policy_pack_are_the_contract(policies):  # noqa: F811
    from myelin import contract

    assert set(policies.ANALYSIS_METRICS) == {contract.REQUESTS_TOTAL, contract.REQUEST_DURATION + "_bucket"}


def test_canary_with_scale_to_zero_is_refused_naming_the_field():
    with pytest.raises(SpecError) as err:
        spec_from_dict({"name": "x", "autoscaling": {"min_replicas": 0},
                        "rollout": {"strategy": "canary", "steps": [{"weight": 10, "pause": "5m"}]}}, "apis/x/api.yaml")
    assert str(err.value).startswith("apis/x/api.yaml: rollout.strategy: canary needs autoscaling.min_replicas 1")
