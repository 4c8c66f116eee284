"""The runtime halves of scale to zero in the cluster (issue 13), over real servers on 127.0.0.1:

- `myelin serve` with MYELIN_ARRIVAL_HEADER=x-amzn-trace-id (set on APIs with min_replicas 0) keeps a held
  request's serving.timeout from its arrival at the ALB, and counts the replica's cold start once;
- `myelin cold-start` (the interceptor's fallback) answers 503 JSON with a Retry-After from the measured cold
  starts in Prometheus, or from the stack's estimate.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from myelin.arrival import parse_arrival
from myelin.cold_start import mean_cold_start_query

PREDICTOR = """
import time


class Predictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        time.sleep(float(payload.get("sleep", 0)))
        return {"ok": True}
"""


def trace(epoch: float) -> str:
    return f"Root=1-{int(epoch):08x}-0123456789abcdef01234567"


def test_alb_trace_header_parsing():
    assert parse_arrival(b"x-amzn-trace-id", b"Self=1-aa;Root=1-67891233-abcdef012345678912345678") == 0x67891233
    assert parse_arrival(b"x-amzn-trace-id", b"Root=1-zzzzzzzz-abc") is None
    assert parse_arrival(b"x-amzn-trace-id", b"nothing here") is None
    assert parse_arrival(b"x-arrival", b"1700000000.5") == 1700000000.5
    assert parse_arrival(b"x-arrival", b"nan") is None and parse_arrival(b"x-arrival", b"-3") is None


@pytest.fixture
def api(tmp_path) -> Path:
    folder = tmp_path / "woken"
    folder.mkdir()
    (folder / "api.yaml").write_text("name: woken\nserving:\n  timeout: 12s\n  max_concurrency: 4\n"
                                     "autoscaling:\n  min_replicas: 0\n")
    (folder / "predictor.py").write_text(PREDICTOR)
    return folder


def metric(base: str, prefix: str) -> float | None:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_held_request_keeps_its_deadline_from_arrival_and_the_cold_start_is_counted_once(start_server, api):
    server = start_server("serve", str(api), env={"MYELIN_ARRIVAL_HEADER": "x-amzn-trace-id"})
    url = f"{server.base}/woken"
    assert metric(server.base, 'myelin_cold_starts_total{api="woken"}') == 0.0  # the series exists from the start
    now = time.time()
    # Arrived 10 s ago (held by the interceptor while this replica started): 2 s of its 12 s deadline are left.
    started = time.monotonic()
    late = httpx.post(url, json={"sleep": 4}, headers={"x-amzn-trace-id": trace(now - 10)}, timeout=20)
    assert late.status_code == 504, late.text
    assert time.monotonic() - started < 3.9  # the rest of its deadline, not the whole of it
    assert metric(server.base, 'myelin_cold_starts_total{api="woken"}') == 1.0
    duration = metric(server.base, 'myelin_cold_start_duration_seconds_sum{api="woken"}')
    assert 5.0 <= duration <= 11.0  # from its arrival to this replica's readiness (a moment before the request)
    # Held longer than serving.timeout (within its margin, arrival.ARRIVAL_MARGIN_S): refused at once, with a
    # Retry-After. (Older than that is no arrival a load balancer stamped: tests/adversarial/test_arrival.py.)
    stale = httpx.post(url, json={}, headers={"x-amzn-trace-id": trace(time.time() - 14)})
    assert stale.status_code == 503 and stale.json()["error"]["type"] == "not_ready"
    assert stale.headers["retry-after"] == "1"
    # Another held request: the replica's cold start is not counted twice.
    assert httpx.post(url, json={}, headers={"x-amzn-trace-id": trace(time.time() - 8)}).status_code == 200
    assert metric(server.base, 'myelin_cold_starts_total{api="woken"}') == 1.0
    # Requests that were not held (arrived after readiness, or no header) keep their whole timeout.
    fresh = httpx.post(url, json={"sleep": 2}, headers={"x-amzn-trace-id": trace(time.time())}, timeout=10)
    assert fresh.status_code == 200
    assert httpx.post(url, json={"sleep": 2}, timeout=10).status_code == 200
    # A client-made future time counts as no wait.
    future = httpx.post(url, json={"sleep": 1}, headers={"x-amzn-trace-id": trace(time.time() + 3600)}, timeout=10)
    assert future.status_code == 200


def test_without_the_setting_the_header_is_ignored(start_server, api):
    server = start_server("serve", str(api))
    r = httpx.post(f"{server.base}/woken", json={"sleep": 1}, headers={"x-amzn-trace-id": trace(time.time() - 11.5)},
                   timeout=20)
    assert r.status_code == 200
    assert metric(server.base, 'myelin_cold_starts_total{api="woken"}') is None


def test_processes_count_a_replica_cold_start_once(start_server, api):
    (api / "api.yaml").write_text("name: woken\nserving:\n  timeout: 30s\n  processes: 2\n  max_concurrency: 4\n"
                                  "autoscaling:\n  min_replicas: 0\n")
    server = start_server("serve", str(api), env={"MYELIN_ARRIVAL_HEADER": "x-amzn-trace-id"})
    server.wait_workers("woken", 2)
    with httpx.Client() as a, httpx.Client() as b:  # two connections: both workers see a held request
        for client in (a, b, a, b):
            assert client.post(f"{server.base}/woken", json={},
                               headers={"x-amzn-trace-id": trace(time.time() - 25)}).status_code == 200
    assert metric(server.base, 'myelin_cold_starts_total{api="woken"}') == 1.0


class FakePrometheus:
    """Answers /api/v1/query with a fixed value and records the queries."""

    def __init__(self, value: str | None):
        self.queries: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.queries.append(parse_qs(urlparse(self.path).query)["query"][0])
                result = [] if value is None else [{"metric": {}, "value": [time.time(), value]}]
                body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()
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

    def close(self):
        self.server.shutdown()
        self.server.server_close()


APIS = json.dumps([{"name": "embed", "endpoint": "/embed", "timeout_seconds": 60, "estimate_seconds": 600}])


@pytest.mark.parametrize("measured, expected", [("300", 240), (None, 540), ("NaN", 540), ("30", 5)])
def test_cold_start_responder_answers_503_with_an_estimated_retry_after(start_server, measured, expected):
    prometheus = FakePrometheus(measured)
    try:
        server = start_server("cold-start", env={"MYELIN_COLD_START_APIS": APIS, "MYELIN_PROMETHEUS_URL": prometheus.url})
        r = httpx.post(f"{server.base}/embed", json={"text": "hi"}, headers={"x-request-id": "held-1"})
        assert r.status_code == 503
        error = r.json()["error"]
        assert error["type"] == "not_ready" and error["request_id"] == "held-1" and "embed" in error["message"]
        assert r.headers["x-request-id"] == "held-1"
        assert int(r.headers["retry-after"]) == expected  # mean measured cold start - the 60 s already waited
        assert prometheus.queries and prometheus.queries[0] == mean_cold_start_query("embed")
        assert httpx.post(f"{server.base}/other", json={}).status_code == 404
        assert httpx.get(f"{server.base}/healthz").status_code == 200
    finally:
        prometheus.close()


def test_cold_start_responder_refuses_a_bad_setting(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "myelin.cli", "cold-start", "--port", "0"],
                          env={"MYELIN_COLD_START_APIS": "[{\"name\": 1}]", "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "MYELIN_COLD_START_APIS" in proc.stderr
