"""`myelin local` behaves like the cluster: one process per API, everything on disk watched, clear console lines
(issue 10 items 1, 2, 7, 8, 9 and issue 9 item 13). Real servers on 127.0.0.1, stopped by pid."""

from __future__ import annotations

import concurrent.futures as cf
import os
import pty
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from adversarial.helpers import wait_for
from conftest import ROOT, ServerProcess, free_port

PREDICTOR = """
import os
import time

import helper

VERSION = {version}


class Predictor:
    def __init__(self, config):
        time.sleep(float(config.get("load_seconds", 0)))
        self.config = config

    def predict(self, payload, query_params):
        if query_params.get("sleep"):
            time.sleep(float(query_params["sleep"]))
        return {{"api": "{name}", "helper": helper.WHO, "version": VERSION, "pid": os.getpid(),
                 "secret": os.environ.get("SECRET"), "other_secret": os.environ.get("{other}_SECRET_SEEN")}}
"""


def make_api(root: Path, name: str, version: int = 1, extra_yaml: str = "", env: dict | None = None,
             other: str = "X") -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "helper.py").write_text(f'WHO = "{name}"\n')
    env_yaml = "".join(f"    {k}: {v}\n" for k, v in (env or {}).items())
    (folder / "api.yaml").write_text(f"name: {name}\n" + (f"predictor:\n  env:\n{env_yaml}" if env else "") + extra_yaml)
    _write(folder / "predictor.py", PREDICTOR.format(version=version, name=name, other=other.upper()))
    return folder


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp~")
    tmp.write_text(text)
    os.replace(tmp, path)


def api_info(server: ServerProcess, name: str) -> dict:
    return next(a for a in httpx.get(f"{server.base}/info", timeout=5).json()["apis"] if a["name"] == name)


# -- item 1: isolation ---------------------------------------------------------------------------------------


def test_each_api_runs_in_its_own_process_with_its_own_modules_and_env(start_server, tmp_path):
    root = tmp_path / "apis"
    make_api(root, "alpha", env={"SECRET": "alpha-only"}, other="beta")
    make_api(root, "beta", other="alpha", extra_yaml="serving:\n  processes: 2\n  max_concurrency: 2\n")
    server = start_server("local", str(root))
    a = httpx.post(f"{server.base}/alpha", json={}).json()
    b = httpx.post(f"{server.base}/beta", json={}).json()
    assert (a["helper"], b["helper"]) == ("alpha", "beta")  # same module name, each API its own
    assert a["secret"] == "alpha-only" and b["secret"] is None  # predictor.env stays in its API
    assert len({a["pid"], b["pid"], server.proc.pid}) == 3
    # serving.processes holds locally: beta's server runs two worker processes.
    wait_for(lambda: 'myelin_ready_processes{api="beta"} 2.0' in httpx.get(f"{server.base}/metrics").text, 30,
             "two beta workers")


# -- item 2 and issue 9 item 13: everything on disk is watched, reloads never block each other ------------------


def test_fixed_added_and_removed_folders_are_picked_up(start_server, tmp_path):
    root = tmp_path / "apis"
    make_api(root, "steady")
    broken = make_api(root, "broken")
    (broken / "api.yaml").write_text("name: broken\nserving:\n  max_concurency: 2\n")
    server = start_server("local", str(root))
    assert api_info(server, "broken")["state"] == "failed"
    assert httpx.post(f"{server.base}/broken", json={}).status_code == 503
    (broken / "api.yaml").write_text("name: broken\n")  # fixed
    wait_for(lambda: httpx.post(f"{server.base}/broken", json={}).status_code == 200, 30, "the fixed API served")
    make_api(root, "newcomer")  # added while running
    wait_for(lambda: httpx.post(f"{server.base}/newcomer", json={}).status_code == 200, 30, "the new folder served")
    shutil.rmtree(root / "steady")  # removed
    wait_for(lambda: httpx.post(f"{server.base}/steady", json={}).status_code == 404, 30, "the removed API gone")
    assert httpx.post(f"{server.base}/steady", json={}).json()["error"]["type"] == "not_found"
    removed = [e for e in server.log_lines() if e.get("message") == "removed"]
    assert [e["api"] for e in removed] == ["steady"] and removed[0]["endpoint"] == "/steady"
    assert {a["name"] for a in httpx.get(f"{server.base}/info").json()["apis"]} == {"broken", "newcomer"}


def test_a_moved_endpoint_leaves_the_old_path_404_and_the_docs_follow(start_server, tmp_path):
    root = tmp_path / "apis"
    folder = make_api(root, "mover")
    server = start_server("local", str(root))
    assert httpx.post(f"{server.base}/mover", json={}).status_code == 200
    (folder / "api.yaml").write_text("name: mover\nnetworking:\n  endpoint: /moved/mover\n")
    wait_for(lambda: httpx.post(f"{server.base}/moved/mover", json={}).status_code == 200, 30, "the new path served")
    assert httpx.post(f"{server.base}/mover", json={}).status_code == 404
    paths = httpx.get(f"{server.base}/openapi.json").json()["paths"]
    assert "/moved/mover" in paths and "/mover" not in paths


def test_a_draining_version_never_blocks_another_apis_reload(start_server, tmp_path):
    root = tmp_path / "apis"
    slow = make_api(root, "slow")
    fast = make_api(root, "fast")
    server = start_server("local", str(root))
    long_request = cf.ThreadPoolExecutor(1).submit(
        httpx.post, f"{server.base}/slow", params={"sleep": "6"}, json={}, timeout=20)
    wait_for(lambda: api_info(server, "slow")["state"] == "ready", 5, "slow ready")
    time.sleep(0.5)  # the long request is in flight on slow's version 1
    _write(slow / "predictor.py", PREDICTOR.format(version=2, name="slow", other="X"))
    _write(fast / "predictor.py", PREDICTOR.format(version=2, name="fast", other="X"))
    started = time.monotonic()
    wait_for(lambda: httpx.post(f"{server.base}/fast", json={}).json()["version"] == 2, 30, "fast reloaded")
    fast_took = time.monotonic() - started
    assert not long_request.done(), "fast reloaded while slow's old version was still draining"
    # New requests: the new version (its load may finish a moment after fast's on a busy machine).
    wait_for(lambda: httpx.post(f"{server.base}/slow", json={}).json()["version"] == 2, 30, "slow reloaded")
    assert long_request.result().json()["version"] == 1  # the old one finished its request
    print(f"\nfast reloaded in {fast_took:.1f}s while slow's old version drained a 6 s request")


def test_a_newer_edit_supersedes_a_version_still_loading(start_server, tmp_path):
    root = tmp_path / "apis"
    folder = make_api(root, "edited", extra_yaml="predictor:\n  config:\n    load_seconds: 2\n")
    server = start_server("local", str(root))
    _write(folder / "predictor.py", PREDICTOR.format(version=2, name="edited", other="X"))
    wait_for(lambda: api_info(server, "edited").get("loading_version") == 2, 10, "version 2 loading")
    _write(folder / "predictor.py", PREDICTOR.format(version=3, name="edited", other="X"))
    wait_for(lambda: httpx.post(f"{server.base}/edited", json={}).json()["version"] == 3, 30, "version 3 serving")
    served = {e.get("version") for e in server.log_lines() if e.get("message") == "serving" and e["api"] == "edited"}
    assert served == {1, 3}  # version 2 never served: superseded while it loaded


# -- item 7: the command line -----------------------------------------------------------------------------------


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "myelin", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_version_and_python_dash_m():
    from myelin import __version__

    out = _cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"myelin {__version__}"


def test_validate_takes_an_api_yaml_path_and_spots_api_yml(tmp_path):
    ok = _cli("validate", "apis/kmeans/api.yaml")
    assert ok.returncode == 0 and "✓ kmeans" in ok.stdout
    folder = tmp_path / "typo"
    folder.mkdir()
    (folder / "api.yml").write_text("name: typo\n")
    for target in (str(folder), str(folder / "api.yml")):
        bad = _cli("validate", target)
        assert bad.returncode == 1 and "did you mean" in bad.stdout and str(folder / "api.yaml") in bad.stdout


def test_every_option_has_help_and_is_in_the_docs():
    from myelin.cli import build_parser

    readme = (ROOT / "docs" / "cli.md").read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, command in sub.choices.items():
        assert f"myelin {name}" in readme
        for action in command._actions:
            if action.dest == "help":
                continue
            assert action.help, f"myelin {name} {action.option_strings or action.dest}: no help text"
            for flag in action.option_strings:
                assert flag in readme, f"docs/cli.md's command table does not mention myelin {name} {flag}"


# -- item 8: a readable console on a terminal ---------------------------------------------------------------------


def test_console_is_readable_on_a_terminal_and_says_each_failure_once(tmp_path):
    root = tmp_path / "apis"
    make_api(root, "fine")
    broken = make_api(root, "kaput")
    _write(broken / "predictor.py", "import helper\n\nclass Predictor:\n    def __init__(self, config):\n"
                                    "        raise ValueError('bad weights')\n\n    def predict(self, p):\n        return p\n")
    port = free_port()
    master, slave = pty.openpty()
    log = tmp_path / "stdout.log"
    proc = subprocess.Popen([sys.executable, "-m", "myelin.cli", "local", str(root), "--port", str(port)],
                            stdout=open(log, "wb"), stderr=slave, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    os.close(slave)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        text = lambda: b"".join(chunks).decode(errors="replace").replace("\r", "")  # noqa: E731
        wait_for(lambda: "✓ fine" in text() and "✗ kaput" in text(), 60, "both status lines")
        _write(broken / "predictor.py", (broken / "predictor.py").read_text() + "\n")  # the same failure again
        time.sleep(3)
        httpx.post(f"http://127.0.0.1:{port}/fine", json={})
        wait_for(lambda: "POST /fine  200" in text(), 10, "a readable request line")
        out = text()
    finally:
        proc.terminate()
        proc.wait(20)
        os.close(master)
    assert re.search(r"✓ fine\s+http://127\.0\.0\.1:\d+/fine\s+\(loaded in \d+\.\d\ds\)", out), out
    assert "… kaput" in out and "loading" in out
    assert out.count("✗ kaput") == 1, out  # each failure once
    assert "ValueError: bad weights" in out and "Traceback (most recent call last)" in out
    assert "predictor.py, line 5" in out
    assert not any(line.startswith("{") for line in out.splitlines()), "JSON on a terminal"


# -- item 9: the HTTP surface --------------------------------------------------------------------------------------


def test_metrics_are_text_with_process_and_load_time_in_serve_and_local(start_server, tmp_path):
    root = tmp_path / "apis"
    make_api(root, "measured")
    local = start_server("local", str(root))
    serve = start_server("serve", str(root / "measured"))
    for server in (local, serve):
        text = httpx.get(f"{server.base}/metrics").text
        assert "process_resident_memory_bytes" in text and "process_cpu_seconds_total" in text
        assert re.search(r'myelin_model_load_seconds\{api="measured"\} \d', text), text
        doc = httpx.get(f"{server.base}/openapi.json").json()
        assert list(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    ready = httpx.get(f"{local.base}/readyz").json()
    assert ready == {"status": "ready", "apis": {"measured": "ready"}}


def test_each_apis_request_body_lists_its_content_types_and_sample(start_server):
    server = start_server("local", str(ROOT / "apis"), "--no-reload")
    paths = httpx.get(f"{server.base}/openapi.json").json()["paths"]
    kmeans = paths["/kmeans"]["post"]["requestBody"]["content"]
    assert list(kmeans)[0] == "application/json" and kmeans["application/json"]["example"] == {"features": [-2.5, 7.3]}
    assert {"text/plain", "multipart/form-data", "application/octet-stream"} <= set(kmeans)
    image = paths["/image-classifier"]["post"]["requestBody"]["content"]
    assert list(image)[0] == "image/png"
    docs = httpx.get(f"{server.base}/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    js = httpx.get(f"{server.base}/docs-assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 500_000


def test_a_rescan_catches_folders_whose_file_events_were_lost(tmp_path):
    """inotify watches a new folder only once it exists: files written into it at once can go unseen. The
    periodic listing schedules what the events missed: a new folder with an api.yaml, a vanished one, and a
    refused API whose files changed since it was read."""
    import io

    from myelin.local.console import Console
    from myelin.local.manager import LocalApi, LocalServer

    root = tmp_path / "apis"
    make_api(root, "known")
    server = LocalServer(root, Console(tty=False, out=io.StringIO(), err=io.StringIO()), "http://127.0.0.1:1")
    scheduled: list[str] = []
    server.schedule = lambda folder: scheduled.append(folder.name)  # record instead of starting processes
    known = server.apis[root / "known"] = LocalApi(root / "known")
    known.synced_at = time.time() + 60  # read after its files were written
    server.rescan()
    assert scheduled == []  # nothing changed
    make_api(root, "newcomer")  # its events "lost": only the listing can see it
    (root / "no-spec").mkdir()
    server.rescan()
    assert scheduled == ["newcomer"]
    known.error = "refused: predictor.py missing"  # failed at its last read...
    known.synced_at = time.time() - 60  # ...which was before its files' last change
    scheduled.clear()
    server.rescan()
    assert scheduled == ["newcomer", "known"]
    shutil.rmtree(root / "known")
    known.error = None
    scheduled.clear()
    server.rescan()
    assert scheduled == ["newcomer", "known"]  # known is gone: its removal is scheduled
