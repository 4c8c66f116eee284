"""Issue 18, item 2: arrival times come from a header a client can forge (an ALB keeps a client's
`X-Amzn-Trace-Id: Root=...`). Against real `myelin serve` and `myelin cold-start` processes on 127.0.0.1:

- an arrival older than serving.timeout + arrival.ARRIVAL_MARGIN_S, or in the future, is ignored: the request
  keeps its whole deadline and no cold start is recorded;
- a cold start is counted only on a replica that started from zero (the request waited before the replica
  started), not on one that was already starting or serving when the request arrived;
- every computed Retry-After is clamped to contract.MAX_RETRY_AFTER_S.
"""

from __future__ import annotations

import json
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from myelin import contract
from myelin.arrival import ARRIVAL_MARGIN_S
from myelin.local.manager import LocalServer

PREDICTOR = """
import time


class Predictor:
    def __init__(self, config):
        time.sleep(float(config.get("load_seconds", 0)))

    def predict(self, payload):
        time.sleep(float(payload.get("sleep", 0)))
        return {"ok": True}
"""

COLD_STARTS = 'myelin_cold_starts_total{api="woken"}'
COLD_START_SUM = 'myelin_cold_start_duration_seconds_sum{api="woken"}'
COLD_START_COUNT = 'myelin_cold_start_duration_seconds_count{api="woken"}'


def trace(epoch: float) -> str:
    return f"Root=1-{int(epoch) & 0xFFFFFFFF:08x}-0123456789abcdef01234567"


def make_api(tmp_path: Path, timeout: str = "12s", load_seconds: float = 0) -> Path:
    folder = tmp_path / "woken"
    folder.mkdir()
    (folder / "api.yaml").write_text(
        f"name: woken\nserving:\n  timeout: {timeout}\n  max_concurrency: 4\nautoscaling:\n  min_replicas: 0\n"
        f"predictor:\n  config:\n    load_seconds: {load_seconds}\n")
    (folder / "predictor.py").write_text(PREDICTOR)
    return folder


def metric(base: str, name: str) -> float | None:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_forged_trace_header_is_ignored(start_server, tmp_path):
    """Today's code took `Root=1-00000001` as a request held since 1970: 503 "waited past serving.timeout", and a
    1.8e9 s cold start recorded on a replica that never cold-started."""
    server = start_server("serve", str(make_api(tmp_path)), env={"MYELIN_ARRIVAL_HEADER": "x-amzn-trace-id"})
    url = f"{server.base}/woken"
    now = time.time()
    forged = {
        "1970": "Root=1-00000001-0123456789abcdef01234567",
        "an hour ago": trace(now - 3600),
        "just past the budget": trace(now - 12 - ARRIVAL_MARGIN_S - 3),
        "the future": trace(now + 3600),
        "the far future": "Root=1-ffffffff-0123456789abcdef01234567",
        "in Self, with a forged Root": "Self=1-67891234-12456789abcdef012345678;Root=1-00000002-abcdef0123456789abcdef01",
    }
    for what, value in forged.items():
        # The whole 12 s deadline: a 2 s predict is answered (a believed arrival would have refused it or cut it).
        r = httpx.post(url, json={"sleep": 2}, headers={"x-amzn-trace-id": value}, timeout=30)
        assert r.status_code == 200, (what, r.status_code, r.text)
    assert metric(server.base, COLD_STARTS) == 0.0
    assert metric(server.base, COLD_START_COUNT) == 0.0
    assert metric(server.base, COLD_START_SUM) == 0.0


def test_a_cold_start_is_counted_only_on_a_replica_that_started_from_zero(start_server, tmp_path):
    """A request that arrived while this replica was already starting (after its process started, before it was
    ready) did not wake it: today's code counted it as a cold start. One that waited before the process started
    did, and is counted once."""
    server = start_server("serve", str(make_api(tmp_path, timeout="60s", load_seconds=2)),
                          env={"MYELIN_ARRIVAL_HEADER": "x-arrival"})  # Unix seconds with a fraction
    url = f"{server.base}/woken"
    started = metric(server.base, "process_start_time_seconds")
    assert started is not None
    # Arrived half a second after the process started, well before it was ready (the predictor loads for 2 s).
    during_start = httpx.post(url, json={}, headers={"x-arrival": repr(started + 0.5)}, timeout=30)
    assert during_start.status_code == 200, during_start.text
    assert metric(server.base, COLD_STARTS) == 0.0
    assert metric(server.base, COLD_START_COUNT) == 0.0
    # Waited 5 s before the process started: it was held for this replica, which did start from zero.
    woken = httpx.post(url, json={}, headers={"x-arrival": repr(started - 5)}, timeout=30)
    assert woken.status_code == 200, woken.text
    assert metric(server.base, COLD_STARTS) == 1.0
    seconds = metric(server.base, COLD_START_SUM)
    assert 5 + 2 <= seconds <= 60 + ARRIVAL_MARGIN_S  # its arrival to readiness: at least the 5 s and the load
    # Counted once per replica, and a forged arrival changes nothing afterwards.
    for value in (repr(started - 6), "1", repr(time.time() + 10**6)):
        assert httpx.post(url, json={}, headers={"x-arrival": value}, timeout=30).status_code == 200
    assert metric(server.base, COLD_STARTS) == 1.0
    assert metric(server.base, COLD_START_SUM) == seconds


class FakePrometheus:
    """Answers every /api/v1/query with one value, as the cluster's Prometheus would for the mean cold start."""

    def __init__(self, value: str):
        body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {}, "value": [time.time(), value]}]}}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("measured", ["1.8e9", "Infinity"])
def test_the_cold_start_responder_clamps_retry_after(start_server, measured):
    """A poisoned mean cold start (a forged arrival recorded before this fix) gave `Retry-After: 179653930`."""
    prometheus = FakePrometheus(measured)
    try:
        apis = json.dumps([{"name": "embed", "endpoint": "/embed", "timeout_seconds": 60, "estimate_seconds": 1e12}])
        server = start_server("cold-start", env={"MYELIN_COLD_START_APIS": apis, "MYELIN_PROMETHEUS_URL": prometheus.url})
        r = httpx.post(f"{server.base}/embed", json={})
        assert r.status_code == 503 and r.json()["error"]["type"] == "not_ready"
        assert int(r.headers["retry-after"]) == contract.MAX_RETRY_AFTER_S
    finally:
        prometheus.close()


def test_the_local_routers_retry_after_is_clamped():
    """`myelin local` computes its own Retry-After from the last cold start while holding requests."""
    api = types.SimpleNamespace(last_cold_start=1.8e9, wake_started=time.monotonic())
    assert LocalServer.retry_after(None, api) == contract.MAX_RETRY_AFTER_S
    api = types.SimpleNamespace(last_cold_start=0.01, wake_started=time.monotonic() - 30)
    assert LocalServer.retry_after(None, api) == 1
