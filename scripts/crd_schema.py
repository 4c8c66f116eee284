"""Extract a strict JSON Schema for one custom resource from its upstream CRD, for tests/infra (kubernetes-validate
checks built-in kinds; custom resources are checked with these files).

    git -C <argo-helm clone> show argo-rollouts-2.41.0:charts/argo-rollouts/templates/crds/rollout-crd.yaml \\
        | python scripts/crd_schema.py - "argo-helm argo-rollouts-2.41.0 .../rollout-crd.yaml" \\
        > tests/infra/schemas/rollout-argoproj-v1alpha1.json

The CRD's served version's `openAPIV3Schema` becomes the schema of the whole object: `apiVersion` and `kind` fixed,
`metadata` as Myelin writes it, and every object that lists `properties` closed (`additionalProperties: false`,
as the API server prunes unknown fields, so a misspelt field fails here instead of vanishing there), except where
the CRD says `x-kubernetes-preserve-unknown-fields`. `x-kubernetes-int-or-string` becomes integer-or-string.
Helm template lines (`{{- ... }}`) around the CRD are dropped.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import yaml

_HELM = re.compile(r"^\s*\{\{.*\}\}\s*$")


def strict(node: Any) -> Any:
    if isinstance(node, list):
        return [strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "x-kubernetes-int-or-string":
            continue
        if key.startswith("x-kubernetes-") or key == "format":
            continue  # Kubernetes extensions; formats (int32, int64) JSON Schema does not check
        out[key] = strict(value)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in node and "additionalProperties" not in node and not node.get(
            "x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def crd_schema(text: str, source: str) -> dict[str, Any]:
    crd = yaml.safe_load("\n".join(line for line in text.splitlines() if not _HELM.match(line)))
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    version = next(v for v in crd["spec"]["versions"] if v.get("served"))
    schema = strict(version["schema"]["openAPIV3Schema"])
    schema["properties"]["apiVersion"] = {"const": f"{group}/{version['name']}"}
    schema["properties"]["kind"] = {"const": kind}
    schema["properties"]["metadata"] = {
        "type": "object", "required": ["name"], "additionalProperties": False,
        "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                       "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                       "annotations": {"type": "object", "additionalProperties": {"type": "string"}}},
    }
    schema["properties"].pop("status", None)  # written by the controller, never by Myelin
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": f"{kind} ({group}/{version['name']}), extracted by scripts/crd_schema.py from {source}",
            **schema}


if __name__ == "__main__":
    path, source = sys.argv[1], sys.argv[2]
    text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    json.dump(crd_schema(text, source), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
