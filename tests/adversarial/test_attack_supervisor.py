"""Attacks on `myelin local`'s supervision: API processes that hang, freeze, or leave processes behind.

In the cluster, the kubelet's livenessProbe (GET /healthz every 10 s, 3 failures) restarts a container whose
predicts are stuck past serving.stuck_timeout (its /healthz says 503 "restart the process") or that stopped
answering at all, and a container that ends takes every process it started with it. `myelin local` must do the
same: before, a stuck API stayed `ready` forever (every later request 504), a frozen one (SIGSTOP; a blocked
event loop) made every request through the router wait forever, and a predictor's helper processes survived
every restart and reload of their API. Real `myelin local` servers on 127.0.0.1, stopped by pid."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from conftest import ServerProcess

LIVENESS_PERIOD = "0.3"  # MYELIN_LIVENESS_PERIOD: 3 failures take about a second

HANGING = """
import os
import subprocess
import sys
import threading


class Predictor:
    def __init__(self, config):
        # A helper process, as a predictor starting a model server or a multiprocessing pool has.
        self.helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])

    def predict(self, payload):
        if payload.get("hang"):
            threading.Event().wait()  # never returns
        if payload.get("fork"):
            if os.fork() == 0:
                import time
                time.sleep(600)
                os._exit(0)
        return {"pid": os.getpid(), "helper": self.helper.pid}
"""


def _start(tmp_path: Path, name: str, yaml: str) -> ServerProcess:
    folder = tmp_path / "apis" / name
    folder.mkdir(parents=True)
    (folder / "api.yaml").write_text(f"name: {name}\n{yaml}")
    (folder / "predictor.py").write_text(HANGING)
    server = ServerProcess(["local", str(tmp_path / "apis")], tmp_path, env={"MYELIN_LIVENESS_PERIOD": LIVENESS_PERIOD})
    server.wait_ready()
    server.wait_settled()
    return server


def _info(server: ServerProcess, name: str) -> dict:
    return next(a for a in httpx.get(f"{server.base}/info", timeout=5).json()["apis"] if a["name"] == name)


def _wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
            if last:
                return last
        except (httpx.HTTPError, KeyError, ValueError, StopIteration):
            pass
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what} (last: {last})")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not reaped yet) is as good as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    """Child processes of `pid`, whichever of its threads started them."""
    return sorted(int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                  for c in (task / "children").read_text().split())


def _kill_leftovers(pids: list[int]) -> None:
    for pid in pids:  # only processes this test made its API start
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_stuck_api_is_killed_by_its_liveness_probe_and_restarted(tmp_path):
    """Every slot held by a predict that never returns: the API's /healthz says 503 `stuck` after
    serving.stuck_timeout, and the liveness probe restarts it. Before: `ready` forever, every request 504."""
    server = _start(tmp_path, "stuck", "serving:\n  max_concurrency: 1\n  max_queue_length: 1\n  threads: 1\n"
                                       "  timeout: 1s\n  stuck_timeout: 1s\n")
    try:
        first = _info(server, "stuck")["pid"]
        r = httpx.post(f"{server.base}/stuck", json={"hang": True}, timeout=10)
        assert r.status_code == 504
        # Killed (with its process group) and started again.
        info = _wait_for(lambda: (i := _info(server, "stuck"))["restarts"] >= 1 and i["state"] == "ready" and i,
                         30, "the stuck API restarted")
        assert info["pid"] != first
        assert "liveness probe failed 3 times" in info["last_exit"]["how"], info["last_exit"]
        assert "stuck" in info["last_exit"]["how"]
        assert not _alive(first)
        r = httpx.post(f"{server.base}/stuck", json={}, timeout=10)
        assert r.status_code == 200, r.text
        print(f"stuck API: restarted after {info['last_exit']['ran_seconds']}s, then 200; last exit: "
              f"{info['last_exit']['how']}")
    finally:
        server.stop()


def test_a_frozen_api_process_does_not_hold_requests_forever(tmp_path):
    """SIGSTOP (as a process blocked in C with the GIL, or a blocked event loop, behaves): the probe times out
    3 times, the process is killed, the waiting request gets the router's 503 and the API is restarted.
    Before: the request waited forever (the router forwards without a deadline) and /info said `ready`."""
    server = _start(tmp_path, "frozen", "serving:\n  timeout: 5s\n")
    try:
        frozen = _info(server, "frozen")["pid"]
        os.kill(frozen, signal.SIGSTOP)
        try:
            r = httpx.post(f"{server.base}/frozen", json={}, timeout=60)
        finally:
            if _alive(frozen):
                os.kill(frozen, signal.SIGCONT)
        assert r.status_code == 503, r.text
        assert r.headers["content-type"] == "application/json"
        info = _wait_for(lambda: (i := _info(server, "frozen"))["state"] == "ready" and i, 30, "restarted")
        assert info["restarts"] == 1 and info["pid"] != frozen
        assert "did not answer within" in info["last_exit"]["how"], info["last_exit"]
        assert httpx.post(f"{server.base}/frozen", json={}, timeout=10).status_code == 200
    finally:
        server.stop()


def test_processes_an_api_started_end_with_it(tmp_path):
    """A predictor's helper subprocess and a fork of its server: gone once the API's process is killed (the
    restart), once a reload retires it, and once `myelin local` stops. Before: each restart and reload left
    them running (one helper more per restart, holding whatever memory or GPU they had)."""
    server = _start(tmp_path, "forky", "serving:\n  timeout: 5s\n")
    started: list[int] = []
    try:
        r = httpx.post(f"{server.base}/forky", json={"fork": True}, timeout=10).json()
        first, helper = r["pid"], r["helper"]
        started.append(helper)
        forks = _children(first)
        started.extend(forks)
        assert helper in forks and len(forks) == 2, forks  # the helper and the fork
        assert all(_alive(p) for p in forks)

        os.kill(first, signal.SIGKILL)  # as the OOM killer would
        info = _wait_for(lambda: (i := _info(server, "forky"))["state"] == "ready" and i["pid"] != first and i,
                         30, "restarted")
        _wait_for(lambda: not any(_alive(p) for p in forks), 10, f"the killed process's children {forks} gone")

        second = info["pid"]
        helper2 = httpx.post(f"{server.base}/forky", json={}, timeout=10).json()["helper"]
        started.append(helper2)
        predictor = tmp_path / "apis" / "forky" / "predictor.py"
        predictor.write_text(predictor.read_text() + "\n# v2\n")  # a reload retires the running version
        _wait_for(lambda: _info(server, "forky")["version"] == 2, 60, "version 2 serving")
        _wait_for(lambda: not _alive(second), 20, "version 1 stopped")
        _wait_for(lambda: not _alive(helper2), 10, "version 1's helper gone with it")

        helper3 = httpx.post(f"{server.base}/forky", json={}, timeout=10).json()["helper"]
        started.append(helper3)
        assert server.stop() == 0
        _wait_for(lambda: not _alive(helper3), 10, "the last helper gone with myelin local")
        print(f"helper processes left: {sum(_alive(p) for p in started)} of {len(started)}")
    finally:
        server.stop()
        _kill_leftovers([p for p in started if _alive(p)])
