"""apis/wine-classifier served with its model from S3 (moto): the files uploaded as its README says,
`predictor.model_uri` overridden the way the cluster passes a stack's overrides (MYELIN_API_SPEC)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import httpx
import yaml

from myelin.spec import deep_merge, load_api_spec, read_spec_file, spec_from_dict

from conftest import ROOT, ServerProcess

EXAMPLE = ROOT / "apis" / "wine-classifier"
README = (EXAMPLE / "README.md").read_text()


def readme_upload() -> tuple[Path, str]:
    """The README's `aws s3 cp <folder> s3://<bucket>/<prefix> --recursive` line: (local folder, S3 URI)."""
    line = next(l for l in README.splitlines() if l.startswith("aws s3 cp "))
    args = shlex.split(line)
    assert args[:3] == ["aws", "s3", "cp"] and "--recursive" in args
    return ROOT / args[3], args[4]


def readme_stack_override() -> dict:
    block = re.search(r"```yaml\n(.*?)```", README, re.S).group(1)
    return yaml.safe_load(block)["myelin:apis"]["wine-classifier"]["overrides"]


def test_wine_classifier_loads_its_model_from_s3(tmp_path, moto):
    folder, uri = readme_upload()
    assert folder == EXAMPLE / "model" and uri.startswith("s3://")
    bucket, prefix = uri[len("s3://"):].split("/", 1)
    s3 = moto.client()
    s3.create_bucket(Bucket=bucket)
    for path in sorted(folder.iterdir()):  # what `aws s3 cp --recursive` does
        s3.upload_file(str(path), bucket, prefix + path.name)

    overrides = readme_stack_override()
    assert overrides["predictor"]["model_uri"] == uri
    effective = spec_from_dict(deep_merge(read_spec_file(EXAMPLE / "api.yaml"), overrides), "stack overrides")
    assert effective.predictor.model_uri == uri and effective.compute.model_disk == "1Gi"

    sample = json.loads((EXAMPLE / "sample.json").read_text())
    server = ServerProcess(["serve", str(EXAMPLE)], tmp_path, moto.env(
        MYELIN_API_SPEC=effective.model_dump_json(), MYELIN_MODEL_CACHE=str(tmp_path / "cache")))
    try:
        server.wait_ready(timeout=120)
        from_s3 = httpx.post(server.base + "/wine-classifier", json=sample).json()
        info = httpx.get(server.base + "/info").json()["apis"][0]
        assert info["model"]["uri"] == uri and info["model"]["downloaded"] is True
        assert Path(info["model"]["dir"]).is_relative_to(tmp_path / "cache")
        assert sorted(p.name for p in Path(info["model"]["dir"]).iterdir()) == ["config.json", "weights.json"]
    finally:
        server.stop()
    assert sorted(g["path"] for g in moto.requests() if g["method"] == "GET" and g["path"].startswith(f"/{bucket}/")) == [
        f"/{bucket}/{prefix}config.json", f"/{bucket}/{prefix}weights.json"]

    local = ServerProcess(["serve", str(EXAMPLE)], tmp_path, moto.env(MYELIN_MODEL_CACHE=str(tmp_path / "cache")))
    try:
        local.wait_ready(timeout=120)
        assert load_api_spec(EXAMPLE).predictor.model_uri == "model"
        assert httpx.post(local.base + "/wine-classifier", json=sample).json() == from_s3  # same model either way
        assert from_s3["cultivar"] == "class_0"
    finally:
        local.stop()
