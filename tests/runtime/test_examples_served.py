"""The example APIs under apis/ load and answer their README curl lines through `myelin local`."""

import json
import re
import shlex
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, ServerProcess
from myelin.spec import load_api_spec

# The examples this repository ships, by name: a folder a user adds under apis/ (as "Writing an API" says) is
# served beside them by the `local` fixture, but is not held to the examples' rules (a README with curl lines).
EXAMPLES = ["hyperparameter-search", "image-classifier", "iris-classifier", "kmeans", "sentence-embedding",
            "text-generator", "wine-classifier"]
ASYNC_EXAMPLES = [name for name in EXAMPLES if load_api_spec(ROOT / "apis" / name).kind == "AsyncAPI"]
REALTIME_EXAMPLES = [name for name in EXAMPLES if name not in ASYNC_EXAMPLES]


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("local")
    # The AsyncAPI examples keep their jobs under MYELIN_STATE_DIR (default .myelin/ in the working directory).
    server = ServerProcess(["local", "apis", "--no-reload"], tmp, env={"MYELIN_STATE_DIR": str(tmp / "state")})
    server.wait_ready(timeout=180)
    server.wait_settled(timeout=180)
    yield server
    server.stop()


def readme_curl(name: str) -> list[str]:
    text = (ROOT / "apis" / name / "README.md").read_text()
    line = next(l for l in text.splitlines() if l.strip().startswith("curl "))
    return shlex.split(line.strip())


def test_all_examples_exist():
    assert {"iris-classifier", "kmeans", "image-classifier", "sentence-embedding", "wine-classifier",
            "text-generator"} <= set(REALTIME_EXAMPLES)
    assert ASYNC_EXAMPLES == ["hyperparameter-search"]


@pytest.mark.parametrize("name", REALTIME_EXAMPLES)
def test_readme_curl_line_works_as_written(local, name):
    args = readme_curl(name)
    args = [re.sub(r"http://127\.0\.0\.1:8888", local.base, a) for a in args]
    out = subprocess.run(args + ["-w", "\n%{http_code}"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    body, _, code = out.stdout.rpartition("\n")
    assert code == "200", (name, out.stdout, out.stderr, local.stderr()[-2000:])
    assert body.strip().startswith("{")


def readme_shell_lines(name: str) -> list[str]:
    """The commands in the README's ```sh blocks, in order."""
    lines, inside = [], False
    for line in (ROOT / "apis" / name / "README.md").read_text().splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```sh"
        elif inside and line.strip():
            lines.append(line)
    return lines


@pytest.mark.parametrize("name", ASYNC_EXAMPLES)
def test_readme_submit_poll_result_session_works_as_written(local, name):
    """An AsyncAPI's README: the submit line keeps the job id in ID, the poll line shows the job until it is done."""
    submit_line, poll_line = [re.sub(r"http://127\.0\.0\.1:8888", local.base, l) for l in readme_shell_lines(name)]
    out = subprocess.run(["bash", "-c", f"set -euo pipefail\n{submit_line}\necho \"$ID\""], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    job_id = out.stdout.strip()
    assert out.returncode == 0 and re.fullmatch(r"[0-9a-f]{32}", job_id), (out.stdout, out.stderr)
    statuses = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        polled = subprocess.run(["bash", "-c", poll_line], capture_output=True, text=True, cwd=ROOT, timeout=60,
                                env={"ID": job_id, "PATH": "/usr/bin:/bin"})
        doc = json.loads(polled.stdout)
        statuses.append(doc["status"])
        if doc["status"] in ("completed", "failed"):
            break
        time.sleep(0.2)
    assert doc["status"] == "completed", (doc, local.stdout()[-2000:])
    assert doc["id"] == job_id and doc["result"]["best"]["accuracy"] > 0.9
    assert set(statuses) <= {"in_queue", "in_progress", "completed"}


# -- the documentation's curl lines (README.md, docs/), each run as written against this server -----------------------

def _docs_local_commands() -> list:
    from doc_commands import commands, is_local_curl

    return [c for c in commands() if is_local_curl(c.text)]


def _run_as_written(line: str, base: str, env: dict | None = None) -> subprocess.CompletedProcess:
    from doc_commands import local_url

    return subprocess.run(["bash", "-c", f"set -euo pipefail\n{local_url(line, base)}"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, env=env)


@pytest.mark.parametrize("command", [c for c in _docs_local_commands() if not c.text.startswith("ID=")
                                     and "$ID" not in c.text], ids=lambda c: c.where())
def test_docs_curl_lines_work_as_written(local, command):
    """Each prediction line of the quick start (README.md, docs/getting-started.md, ...) answers a prediction."""
    out = _run_as_written(command.text, local.base)
    assert out.returncode == 0, (command.where(), out.stderr, local.stderr()[-2000:])
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert lines and not any("error" in doc for doc in lines if isinstance(doc, dict)), (command.where(), out.stdout)
    if command.text.startswith("curl -N"):  # a stream: items, then the last one says it is done
        assert len(lines) > 2 and lines[-1].get("done") is True, out.stdout


def _submit_poll_pairs() -> list:
    cmds = _docs_local_commands()
    return [(a, b) for a, b in zip(cmds, cmds[1:]) if a.text.startswith("ID=$(") and "$ID" in b.text]


@pytest.mark.parametrize("pair", _submit_poll_pairs(), ids=lambda p: p[0].where())
def test_docs_submit_and_poll_work_as_written(local, pair):
    """An AsyncAPI's two lines in the docs: the first keeps the job id in ID, the second shows the job until done."""
    submit, poll = pair
    out = _run_as_written(f'{submit.text}\necho "$ID"', local.base)
    job_id = out.stdout.strip()
    assert out.returncode == 0 and re.fullmatch(r"[0-9a-f]{32}", job_id), (submit.where(), out.stdout, out.stderr)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        doc = json.loads(_run_as_written(poll.text, local.base, env={"ID": job_id, "PATH": "/usr/bin:/bin"}).stdout)
        if doc["status"] in ("completed", "failed"):
            break
        time.sleep(0.2)
    assert doc["status"] == "completed" and doc["id"] == job_id, (poll.where(), doc)


def test_docs_name_a_local_curl_line_for_every_test_above():
    """The parametrized tests above have something to run (a parse that found nothing would pass vacuously)."""
    assert len(_docs_local_commands()) >= 14 and len(_submit_poll_pairs()) >= 3


def test_local_lists_every_example_as_loaded(local):
    """Not on a terminal (as here), the console's status lines are JSON events on stdout."""
    serving = {line["api"]: line for line in local.log_lines() if line.get("message") == "serving"}
    assert set(EXAMPLES) <= set(serving), local.stdout()[-3000:]  # and whatever a user added beside them
    for name, line in serving.items():
        assert line["url"] == f"{local.base}/{name}" and line["load_seconds"] > 0


def test_examples_answer_with_real_predictions(local):
    iris = httpx.post(f"{local.base}/iris-classifier", json={
        "sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}).json()
    assert iris["label"] == "setosa"
    km = httpx.post(f"{local.base}/kmeans", json={"features": [0.5, -1.0]}).json()
    assert 0 <= km["cluster"] < 100
    png = (ROOT / "apis/image-classifier/sample.png").read_bytes()
    digit = httpx.post(f"{local.base}/image-classifier", content=png, headers={"content-type": "image/png"}).json()
    assert digit["digit"] == 7
    bad = httpx.post(f"{local.base}/image-classifier", content=b"not a png", headers={"content-type": "image/png"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "predictor_error"
    emb = httpx.post(f"{local.base}/sentence-embedding", content="A cat sits on the mat.",
                     headers={"content-type": "text/plain"}, timeout=60).json()
    assert len(emb["embedding"]) == 384


def test_text_generator_streams_under_myelin_local(local):
    sample = (ROOT / "apis/text-generator/sample.json").read_bytes()
    url = f"{local.base}/text-generator"
    headers = {"content-type": "application/json"}
    with httpx.stream("POST", url, content=sample, headers=headers, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
        items = [json.loads(line) for line in r.iter_lines() if line]
    assert items[-1]["done"] is True and items[-1]["finish_reason"] == "length" and len(items) == 31
    assert all("token" in i for i in items[:-1])
    with httpx.stream("POST", url, content=sample, headers={**headers, "accept": "text/event-stream"}, timeout=30) as r:
        events = [e for e in r.read().decode().split("\n\n") if e]
    assert r.headers["content-type"] == "text/event-stream"
    # The same seed gives the same words, whatever the framing.
    assert [json.loads(e.removeprefix("data: ")) for e in events] == items
    bad = httpx.post(url, json={"max_tokens": 0})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "predictor_error"
