"""A predictor that crashes in native code (a segfault, as a broken extension or GPU driver does) leaves its Python
stack in the server's stderr: the log a user reads after the fact (`kubectl logs --previous`, `myelin local`'s
console) names the predictor's function and file, not only "exit code -11" (logs.trace_crashes).

The crash is real: `ctypes.string_at(0)` reads address 0. Found by the read-ahead's hostile review: orjson 3.13.0
segfaults on an Enum whose `.value` raises, killing the worker with nothing in its log.
"""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from tests.adversarial.helpers import wait_for

PREDICTOR = '''
import ctypes
import resource


def _touch_null_pointer():
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file, whatever the machine's ulimit -c
    return ctypes.string_at(0)


class Predictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        if payload.get("crash"):
            _touch_null_pointer()
        return {"ok": True}
'''


def _api(root: Path, processes: int) -> Path:
    folder = root / f"segfaulter-{processes}"
    folder.mkdir()
    (folder / "predictor.py").write_text(PREDICTOR)
    (folder / "api.yaml").write_text(f"name: segfaulter\nserving:\n  processes: {processes}\n")
    return folder


def _crash(server) -> None:
    assert httpx.post(server.base + "/segfaulter", json={}, timeout=10).json() == {"ok": True}
    with pytest.raises(httpx.HTTPError):  # the process answering it dies before it answers
        httpx.post(server.base + "/segfaulter", json={"crash": True}, timeout=10)


def _assert_traced(stderr: str) -> None:
    assert "Fatal Python error: Segmentation fault" in stderr, stderr[-3000:]
    trace = stderr.split("Fatal Python error: Segmentation fault", 1)[1]
    assert "predictor.py" in trace, trace[:3000]
    assert "in _touch_null_pointer" in trace and "in predict" in trace, trace[:3000]


def test_a_segfault_in_a_predict_leaves_its_python_stack_in_the_log(tmp_path, start_server):
    server = start_server("serve", str(_api(tmp_path, 1)))
    _crash(server)
    assert wait_for(lambda: server.proc.poll() is not None, 20, "the server process exits")
    assert server.proc.returncode == -signal.SIGSEGV
    _assert_traced(server.stderr())


def test_a_worker_that_segfaults_leaves_its_stack_and_is_replaced(tmp_path, start_server):
    server = start_server("serve", str(_api(tmp_path, 2)))
    server.wait_workers("segfaulter", 2)
    _crash(server)
    wait_for(lambda: "Fatal Python error: Segmentation fault" in server.stderr(), 20, "the crash trace in stderr")
    _assert_traced(server.stderr())
    server.wait_workers("segfaulter", 2)  # the supervisor replaced the worker
    assert httpx.post(server.base + "/segfaulter", json={}, timeout=10).json() == {"ok": True}


def test_myelin_local_shows_the_crash_trace_and_restarts_the_api(tmp_path, start_server):
    apis = tmp_path / "apis"
    apis.mkdir()
    folder = _api(apis, 1)
    server = start_server("local", str(folder.parent))
    assert httpx.post(server.base + "/segfaulter", json={}, timeout=10).json() == {"ok": True}
    crashed = httpx.post(server.base + "/segfaulter", json={"crash": True}, timeout=10)
    assert crashed.status_code == 503  # the request that was running in the process that ended

    def console() -> str | None:
        text = server.stdout() + server.stderr()
        return text if "in _touch_null_pointer" in text else None

    output = wait_for(console, 20, "the crash trace on the console")
    assert "Fatal Python error: Segmentation fault" in output and "predictor.py" in output
    wait_for(lambda: httpx.post(server.base + "/segfaulter", json={}, timeout=10).status_code == 200, 30,
             "the API serving again after its restart", step=0.2)
