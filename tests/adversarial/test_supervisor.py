"""`myelin local` supervises its API processes as Kubernetes supervises containers (issue 18 item 6).

A serving process that ends on its own (SIGKILL, as the OOM killer sends; a job calling os._exit) is seen at
once, shown on the console, /info, /readyz and the page, and started again with exponential back-off; while
it is down requests get the contract's 503 with Retry-After, and API keys are still checked first. Real
`myelin local` servers on 127.0.0.1, stopped by pid; the API processes are killed by pid."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from conftest import ServerProcess
from tests.adversarial.helpers import wait_for

KEYS_ENV = "MYELIN_ADVERSARIAL_SUPERVISOR_KEYS"
KEY = "k-supervised-4c1f9e"

PREDICTOR = """
import os


class Predictor:
    def __init__(self, config):
        pass

    def predict(self, payload, query_params):
        if query_params.get("exit"):
            os._exit(int(query_params["exit"]))  # a job that ends its own process
        return {"pid": os.getpid()}
"""


def make_api(root: Path, name: str, yaml: str = "") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "api.yaml").write_text(f"name: {name}\n{yaml}")
    (folder / "predictor.py").write_text(PREDICTOR)
    return folder


def info(server: ServerProcess, name: str) -> dict:
    return next(a for a in httpx.get(f"{server.base}/info", timeout=5).json()["apis"] if a["name"] == name)


def events(server: ServerProcess, message: str) -> list[dict]:
    return [e for e in server.log_lines() if e.get("message") == message]


def test_restart_backoff_is_exponential_capped_and_reset_after_running_fine():
    from myelin.local.manager import RestartBackoff

    b = RestartBackoff()
    now = 1000.0
    delays = []
    for _ in range(9):
        b.started(now)
        now += 1.0  # each one ran a second
        delays.append(b.ended(now))
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]  # immediate, then doubling, capped
    b.started(now)
    now += RestartBackoff.RESET_AFTER_S  # ran fine for a while: the count starts again
    assert b.ended(now) == 0.0
    assert b.ended(now + 0.5) == 1.0  # ended while restarting (never started): counts as another


def test_a_killed_api_process_is_seen_shown_and_restarted_with_backoff_and_keys_still_come_first(tmp_path):
    root = tmp_path / "apis"
    make_api(root, "victim", "networking:\n  auth:\n    api_keys_env: " + KEYS_ENV + "\n")
    make_api(root, "bystander")
    server = ServerProcess(["local", str(root)], tmp_path, env={KEYS_ENV: KEY})
    keyed = {"x-api-key": KEY}
    try:
        server.wait_ready()
        server.wait_settled()
        url = f"{server.base}/victim"
        first = httpx.post(url, json={}, headers=keyed).json()["pid"]
        assert info(server, "victim")["pid"] == first and info(server, "victim")["restarts"] == 0

        # 1. SIGKILL, as the OOM killer would: seen at once, restarted at once (the first restart waits 0 s).
        killed = time.monotonic()
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: events(server, "exited"), 20, "the exit on the console", step=0.005)
        seen = time.monotonic() - killed
        second = wait_for(lambda: info(server, "victim")["state"] == "ready" and info(server, "victim")["pid"], 60,
                          "restarted")
        assert second != first
        assert httpx.post(url, json={}, headers=keyed).json()["pid"] == second
        described = info(server, "victim")
        assert described["restarts"] == 1 and "SIGKILL" in described["last_exit"]["how"]
        assert described["last_exit"]["code"] == -signal.SIGKILL

        # 2. Killed again within a minute: the back-off is 1 s. While it is down: 503 + Retry-After, readiness
        # and the page say so, and a request without the key is 401 first.
        os.kill(second, signal.SIGKILL)
        wait_for(lambda: info(server, "victim")["state"] == "restarting", 20, "restarting in /info")
        down = httpx.post(url, json={}, headers=keyed)
        assert down.status_code == 503 and down.headers["content-type"] == "application/json"
        assert down.json()["error"]["type"] == "not_ready" and "restarting" in down.json()["error"]["message"]
        assert int(down.headers["retry-after"]) >= 1
        assert down.headers["x-request-id"] == down.json()["error"]["request_id"]
        unauthenticated = httpx.post(url, json={})
        assert unauthenticated.status_code == 401 and unauthenticated.json()["error"]["type"] == "unauthorized"
        ready = httpx.get(f"{server.base}/readyz")
        assert ready.json()["apis"]["victim"] == "restarting"
        page = httpx.get(f"{server.base}/", headers={"accept": "text/html"}).text
        assert 'class="state restarting"' in page and "was killed by SIGKILL" in page
        assert httpx.post(f"{server.base}/bystander", json={}).status_code == 200  # the others serve on

        third = wait_for(lambda: info(server, "victim")["state"] == "ready" and info(server, "victim")["pid"], 60,
                         "restarted again")
        # 3. A job that calls os._exit: its request gets the contract's 503; the process is restarted (2 s).
        crashed = httpx.post(url, json={}, params={"exit": "3"}, headers=keyed)
        assert crashed.status_code == 503 and crashed.json()["error"]["type"] == "not_ready"
        wait_for(lambda: info(server, "victim")["restarts"] == 3 and info(server, "victim")["state"] == "ready", 60,
                 "restarted a third time")
        assert info(server, "victim")["last_exit"]["how"] == "exited with code 3"
        assert httpx.post(url, json={}, headers=keyed).json()["pid"] not in (first, second, third)
        assert httpx.get(f"{server.base}/readyz").status_code == 200
    finally:
        server.stop()
    exits = events(server, "exited")
    print(f"\nSIGKILL on the console after {seen:.3f}s; back-offs {[e['backoff_seconds'] for e in exits]}; "
          f"503 + Retry-After {down.headers['retry-after']} and 401 without a key while down")
    assert [e["backoff_seconds"] for e in exits] == [0.0, 1.0, 2.0]  # exponential back-off
    assert [e["restarts"] for e in exits] == [0, 1, 2]
    assert [e["restart"] for e in events(server, "restarting")] == [1, 2, 3]
    served = [e for e in events(server, "serving") if e["api"] == "victim"]
    assert [e.get("restarts") for e in served] == [None, 1, 2, 3]
    logged = [e for e in server.log_lines() if e.get("request_id") == down.json()["error"]["request_id"]]
    assert [(e["status"], e["error"]) for e in logged] == [(503, "not_ready")]  # the router's own line


def test_a_job_whose_process_dies_is_retried_after_the_restart(tmp_path):
    """An AsyncAPI job that kills its process: the job store keeps the claim; once the restarted process sees
    it past its visibility timeout (serving.timeout + 5 s here) it runs it again, and it completes."""
    from tests.async_jobs.conftest import PREDICTOR as JOBS_PREDICTOR

    root = tmp_path / "apis"
    folder = root / "jobs"
    folder.mkdir(parents=True)
    (folder / "api.yaml").write_text("name: jobs\nkind: AsyncAPI\nserving:\n  timeout: 1s\n")
    (folder / "predictor.py").write_text(JOBS_PREDICTOR.read_text())
    server = ServerProcess(["local", str(root)], tmp_path, env={"MYELIN_STATE_DIR": str(tmp_path / "state")})
    marker = tmp_path / "died-once"
    try:
        server.wait_ready()
        server.wait_settled()
        submitted = httpx.post(f"{server.base}/jobs", json={"die_once": str(marker), "n": 6})
        assert submitted.status_code == 202, submitted.text
        job = submitted.json()["id"]
        wait_for(lambda: events(server, "exited"), 30, "the worker's process exit seen")
        done = wait_for(lambda: (d := httpx.get(f"{server.base}/jobs/{job}").json())["status"] == "completed" and d,
                        90, "the job completed after the restart", step=0.2)
        assert done["result"] == {"n": 6, "square": 36}
        assert info(server, "jobs")["restarts"] == 1
    finally:
        server.stop()
    attempts = [(e["attempt"], e["job_status"]) for e in server.log_lines() if e.get("job_id") == job]
    assert attempts == [(2, "completed")]
