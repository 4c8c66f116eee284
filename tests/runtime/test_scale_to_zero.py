"""Scale to zero under `myelin local` (issue 13): an API with autoscaling.min_replicas 0 is not loaded at start,
its first request is held while it loads, and it is unloaded after downscale_stabilization without requests.
Real servers on 127.0.0.1, stopped by pid."""

from __future__ import annotations

import concurrent.futures as cf
import os
import time
from pathlib import Path

import httpx
import pytest

from conftest import ServerProcess

PREDICTOR = """
import os
import time
from pathlib import Path

LOAD_SECONDS = {load}


class Predictor:
    def __init__(self, config):
        # One line per construction: the test counts them.
        with open(Path(__file__).with_name("constructed.log"), "a") as f:
            f.write(f"{{os.getpid()}}\\n")
        time.sleep(LOAD_SECONDS)
        {fail}

    def predict(self, payload):
        return {{"pid": os.getpid()}}
"""


def make_api(root: Path, name: str, load: float, timeout: str = "30s", idle: str = "2s", fail: bool = False) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "api.yaml").write_text(
        f"name: {name}\nserving:\n  timeout: {timeout}\n  max_concurrency: 8\n"
        f"autoscaling:\n  min_replicas: 0\n  downscale_stabilization: {idle}\n")
    (folder / "predictor.py").write_text(PREDICTOR.format(
        load=load, fail='raise RuntimeError("the model file is missing")' if fail else "pass"))
    return folder


def constructions(folder: Path) -> list[str]:
    log = folder / "constructed.log"
    return log.read_text().split() if log.exists() else []


def info(server: ServerProcess, name: str) -> dict:
    return next(a for a in httpx.get(f"{server.base}/info", timeout=5).json()["apis"] if a["name"] == name)


def metric(server: ServerProcess, line_prefix: str) -> float:
    for line in httpx.get(f"{server.base}/metrics", timeout=5).text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {line_prefix} in /metrics")


def events(server: ServerProcess, message: str) -> list[dict]:
    return [e for e in server.log_lines() if e.get("message") == message]


def pids_alive(pids: list[str]) -> list[str]:
    alive = []
    for pid in pids:
        try:
            os.kill(int(pid), 0)
            alive.append(pid)
        except ProcessLookupError:
            pass
    return alive


@pytest.fixture
def zero(start_server, tmp_path):
    def start(**kwargs) -> tuple[ServerProcess, Path]:
        root = tmp_path / "apis"
        folder = make_api(root, "sleepy", **kwargs)
        return start_server("local", str(root)), folder
    return start


def test_not_loaded_at_start_then_held_first_request_answered_and_unloaded_after_idle(zero):
    server, folder = zero(load=1.5, idle="2s")
    assert info(server, "sleepy")["state"] == "idle"
    assert constructions(folder) == []  # nothing loaded at start
    assert events(server, "idle")[0]["api"] == "sleepy"
    assert httpx.get(f"{server.base}/readyz").status_code == 200  # an idle API can serve

    started = time.monotonic()
    first = httpx.post(f"{server.base}/sleepy", json={}, timeout=30)
    waited = time.monotonic() - started
    assert first.status_code == 200, first.text  # held, not failed
    assert waited >= 1.5  # it really waited for the slow __init__
    assert constructions(folder) == [str(first.json()["pid"])]
    assert info(server, "sleepy")["state"] == "ready"
    assert metric(server, 'myelin_cold_starts_total{api="sleepy"}') == 1.0
    assert metric(server, 'myelin_cold_start_duration_seconds_count{api="sleepy"}') == 1.0
    assert metric(server, 'myelin_cold_start_duration_seconds_sum{api="sleepy"}') >= 1.5
    assert events(server, "serving")[0]["cold_start_seconds"] >= 1.5

    # Warm: served by the same process.
    assert httpx.post(f"{server.base}/sleepy", json={}).json()["pid"] == first.json()["pid"]

    # Unloaded after downscale_stabilization (2s) without requests: the process and its memory are gone.
    deadline = time.monotonic() + 20
    while info(server, "sleepy")["state"] != "idle" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert info(server, "sleepy")["state"] == "idle"
    deadline = time.monotonic() + 15
    while pids_alive(constructions(folder)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pids_alive(constructions(folder)) == []
    assert events(server, "unloaded")[0]["idle_seconds"] >= 2.0

    # A second cold start: a new process, counted.
    second = httpx.post(f"{server.base}/sleepy", json={}, timeout=30)
    assert second.status_code == 200 and second.json()["pid"] != first.json()["pid"]
    assert len(constructions(folder)) == 2
    assert metric(server, 'myelin_cold_starts_total{api="sleepy"}') == 2.0


def test_requests_arriving_during_a_cold_start_are_all_answered_by_one_construction(zero):
    server, folder = zero(load=2.0, idle="60s")
    with cf.ThreadPoolExecutor(12) as pool:
        futures = []
        for _ in range(12):
            futures.append(pool.submit(httpx.post, f"{server.base}/sleepy", json={}, timeout=30))
            time.sleep(0.05)
        held_seen = max_held(server, futures)
        answers = [f.result() for f in futures]
    assert [a.status_code for a in answers] == [200] * 12
    assert len({a.json()["pid"] for a in answers}) == 1
    assert len(constructions(folder)) == 1  # the predictor constructed once
    assert held_seen >= 2  # the hold queue is visible while it loads
    assert metric(server, 'myelin_held_requests{api="sleepy"}') == 0.0
    assert metric(server, 'myelin_cold_starts_total{api="sleepy"}') == 1.0


def max_held(server: ServerProcess, futures) -> float:
    seen = 0.0
    while not all(f.done() for f in futures):
        try:
            seen = max(seen, metric(server, 'myelin_held_requests{api="sleepy"}'))
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return seen


def test_a_load_longer_than_serving_timeout_gets_503_with_retry_after_and_the_load_goes_on(zero):
    server, folder = zero(load=4.0, timeout="1s", idle="60s")
    started = time.monotonic()
    r = httpx.post(f"{server.base}/sleepy", json={}, timeout=30)
    waited = time.monotonic() - started
    assert r.status_code == 503
    body = r.json()["error"]
    assert body["type"] == "not_ready" and "serving.timeout" in body["message"]
    assert int(r.headers["retry-after"]) >= 1
    assert r.headers["x-request-id"] == body["request_id"]
    assert 0.9 <= waited < 3.5  # held for its serving.timeout, not for the whole load
    # The cold start went on: a later request finds the API ready, constructed once.
    deadline = time.monotonic() + 20
    while info(server, "sleepy")["state"] != "ready" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert httpx.post(f"{server.base}/sleepy", json={}).status_code == 200
    assert len(constructions(folder)) == 1
    # Now the last cold start is known: a second timeout's Retry-After is estimated from it (about 4s).
    assert info(server, "sleepy")["scale_to_zero"]["last_cold_start_seconds"] >= 4.0


def test_a_load_failure_during_a_cold_start_gives_every_held_request_a_clear_json_error(zero):
    server, folder = zero(load=0.5, fail=True)
    with cf.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: httpx.post(f"{server.base}/sleepy", json={}, timeout=30), range(4)))
    for a in answers:
        assert a.status_code == 503
        error = a.json()["error"]
        assert error["type"] == "not_ready"
        assert "failed to load during its cold start" in error["message"]
        assert "the model file is missing" not in error["message"]  # the detail: console and /info only
        assert error["request_id"] == a.headers["x-request-id"]
    assert len(constructions(folder)) == 1  # one cold start for all of them
    assert info(server, "sleepy")["state"] == "failed"
    assert "the model file is missing" in info(server, "sleepy")["error"]
    # Fixed on disk: the API goes back to idle and the next request wakes it.
    (folder / "predictor.py").write_text(PREDICTOR.format(load=0.2, fail="pass"))
    deadline = time.monotonic() + 20
    while info(server, "sleepy")["state"] != "idle" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert httpx.post(f"{server.base}/sleepy", json={}, timeout=30).status_code == 200


def test_myelin_serve_always_loads_at_start(start_server, tmp_path):
    folder = make_api(tmp_path, "sleepy", load=0.1)
    server = start_server("serve", str(folder))
    assert constructions(folder) != []  # the container entrypoint loads at once, whatever min_replicas says
    assert httpx.post(f"{server.base}/sleepy", json={}).status_code == 200
