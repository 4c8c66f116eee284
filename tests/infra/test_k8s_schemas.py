"""Every Kubernetes object the program emits passes strict schema validation for the cluster's version."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest

from components.versions import KUBERNETES_VERSION

from .harness import unwrap_secrets

SCHEMAS = Path(__file__).parent / "schemas"
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): SCHEMAS / "scaledobject-keda-v1alpha1.json",
    ("http.keda.sh/v1beta1", "InterceptorRoute"): SCHEMAS / "interceptorroute-http-v1beta1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): SCHEMAS / "triggerauthentication-keda-v1alpha1.json",
    # Extracted by scripts/crd_schema.py from argoproj/argo-helm argo-rollouts-2.41.0 templates/crds (Argo Rollouts v1.9.0).
    ("argoproj.io/v1alpha1", "Rollout"): SCHEMAS / "rollout-argoproj-v1alpha1.json",
    ("argoproj.io/v1alpha1", "AnalysisTemplate"): SCHEMAS / "analysistemplate-argoproj-v1alpha1.json",
}


def k8s_objects(run):
    return [r for r in run.resources if r.typ.startswith("kubernetes:") and "kind" in r.inputs
            and not r.typ.startswith("kubernetes:helm.sh")]


def manifest(recorded) -> dict:
    # Recorded inputs are the manifest Pulumi sends to the API server (camelCase wire names);
    # secret values arrive wrapped in Pulumi's secret envelope.
    return unwrap_secrets(json.loads(json.dumps(recorded.inputs)))


def test_program_emits_the_expected_kinds(run):
    kinds = {r.inputs["kind"] for r in k8s_objects(run)}
    assert {"Namespace", "ServiceAccount", "Deployment", "Service", "ScaledObject", "PodDisruptionBudget",
            "NetworkPolicy", "Ingress", "TriggerAuthentication"} <= kinds


def test_cluster_version_is_validated(run):
    version = run.config.get("myelin:cluster", {}).get("version", KUBERNETES_VERSION)
    assert version in kubernetes_validate.utils.all_versions() or f"{version}.0" in kubernetes_validate.utils.all_versions()


def test_every_builtin_object_is_strictly_valid(run):
    version = run.config.get("myelin:cluster", {}).get("version", KUBERNETES_VERSION)
    checked = 0
    for rec in k8s_objects(run):
        obj = manifest(rec)
        if (obj["apiVersion"], obj["kind"]) in CRD_SCHEMAS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{rec.typ} {rec.name}: {err}")
        checked += 1
    assert checked >= 10


def test_every_custom_resource_matches_its_crd_schema(run):
    crds = [r for r in k8s_objects(run) if (r.inputs["apiVersion"], r.inputs["kind"]) in CRD_SCHEMAS]
    assert crds, "expected KEDA ScaledObjects"
    for rec in crds:
        schema = json.loads(CRD_SCHEMAS[(rec.inputs["apiVersion"], rec.inputs["kind"])].read_text())
        jsonschema.Draft202012Validator(schema).validate(manifest(rec))


def test_crd_schema_rejects_a_broken_scaledobject(run):
    # A realtime API's ScaledObject (its prometheus trigger has a threshold); the order in which the program
    # registers objects is Pulumi's, so an AsyncAPI's (aws-sqs-queue, cpu) may come first.
    rec = next(r for r in k8s_objects(run) if r.inputs["kind"] == "ScaledObject"
               and r.inputs["spec"]["triggers"][0]["type"] == "prometheus")
    schema = json.loads(CRD_SCHEMAS[("keda.sh/v1alpha1", "ScaledObject")].read_text())
    broken = manifest(rec)
    del broken["spec"]["triggers"][0]["metadata"]["threshold"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(broken)
    typo = manifest(rec)
    typo["spec"]["minReplicas"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(typo)


def test_crd_schema_rejects_a_broken_interceptor_route(run):
    rec = next(r for r in k8s_objects(run) if r.inputs["kind"] == "InterceptorRoute")
    schema = json.loads(CRD_SCHEMAS[("http.keda.sh/v1beta1", "InterceptorRoute")].read_text())
    jsonschema.Draft202012Validator(schema).validate(manifest(rec))
    both = manifest(rec)
    both["spec"]["target"]["port"] = 8080  # the CRD's rule: exactly one of port and portName
    no_metric = manifest(rec)
    del no_metric["spec"]["scalingMetric"]
    empty_cold_start = manifest(rec)
    empty_cold_start["spec"]["coldStart"] = {}  # the CRD's rule: fallback or placeholder
    old_field = manifest(rec)
    old_field["spec"]["scaleTargetRef"] = {"name": "x"}  # HTTPScaledObject's field, not this kind's
    for broken in (both, no_metric, empty_cold_start, old_field):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft202012Validator(schema).validate(broken)


def test_strict_validation_catches_a_typo(run):
    """The validator is really strict: an unknown field in a Deployment fails."""
    rec = next(r for r in k8s_objects(run) if r.inputs["kind"] == "Deployment")
    obj = manifest(rec)
    obj["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
