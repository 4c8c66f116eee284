"""GitHub workflows pass the workflow JSON schema; the Dockerfile passes hadolint."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    assert path, f"{name} is not installed (it comes from requirements.txt)"
    return str(path)


def test_workflows_match_the_github_schema():
    assert len(WORKFLOWS) >= 3
    result = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *map(str, WORKFLOWS)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _load(name: str) -> dict:
    data = yaml.safe_load((REPO / ".github" / "workflows" / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def _steps(job: dict) -> list[dict]:
    return job["steps"]


def test_every_action_is_pinned():
    for wf in WORKFLOWS:
        data = yaml.safe_load(wf.read_text())
        for job in data["jobs"].values():
            for step in job["steps"]:
                if "uses" in step:
                    ref = step["uses"].split("@")
                    assert len(ref) == 2 and ref[1], f"{wf.name}: {step['uses']} is not pinned"
                    if step["uses"].startswith("pulumi/actions"):
                        assert step["with"]["pulumi-version"] == "3.272.0"


def test_tests_run_on_every_pull_request():
    wf = _load("tests.yml")
    assert "pull_request" in wf["on"]
    # the README's test command, as .ci/run runs it
    assert any(s.get("run", "").strip() == "make test" for s in _steps(wf["jobs"]["pytest"]))


def test_preview_per_stack_with_diff_comment_and_policy_pack():
    wf = _load("preview.yml")
    assert "pull_request" in wf["on"]
    job = wf["jobs"]["preview"]
    assert job["strategy"]["matrix"]["stack"] == ["dev", "prod"]
    (pulumi,) = [s for s in _steps(job) if s.get("uses", "").startswith("pulumi/actions@")]
    assert pulumi["with"]["command"] == "preview" and pulumi["with"]["comment-on-pr"] is True
    assert pulumi["with"]["policyPacks"] == "policy"
    assert (REPO / pulumi["with"]["policyPacks"] / "PulumiPolicy.yaml").is_file()


def test_deploy_dev_on_main_and_prod_behind_approval():
    wf = _load("deploy.yml")
    assert wf["on"]["push"]["branches"] == ["main"]
    dev, prod = wf["jobs"]["dev"], wf["jobs"]["prod"]
    assert prod["needs"] == "dev" and prod["environment"] == "production"
    for job, stack in ((dev, "dev"), (prod, "prod")):
        (pulumi,) = [s for s in _steps(job) if s.get("uses", "").startswith("pulumi/actions@")]
        assert pulumi["with"]["command"] == "up" and pulumi["with"]["stack-name"] == stack


def test_dockerfile_passes_hadolint():
    result = subprocess.run([tool("hadolint"), str(REPO / "predictor_image" / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_contract():
    text = (REPO / "predictor_image" / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=" in text and "FROM ${BASE_IMAGE}" in text
    assert "USER 10001:10001" in text
    assert 'ENTRYPOINT ["myelin", "serve", "/app/api", "--host", "0.0.0.0", "--port", "8080"]' in text
    assert "COPY --from=api" in text
