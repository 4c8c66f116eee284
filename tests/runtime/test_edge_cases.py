"""Edge cases found in review: requests mid-upload at a drain, batching limits, timeouts that free capacity,
shutdown during a model load, load failures of any kind."""

import concurrent.futures as cf
import signal
import socket
import time

import httpx
import pytest

from myelin.spec import SpecError, load_api_spec


def make_api(root, name, yaml_text, predictor_text):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "api.yaml").write_text(yaml_text)
    (folder / "predictor.py").write_text(predictor_text)
    return folder


SLEEPY = """import time
class Predictor:
    def __init__(self, config):
        time.sleep(config.get("load", 0))
    def predict(self, payload):
        time.sleep(payload.get("sleep", 0) if isinstance(payload, dict) else 0)
        return {"ok": True}
"""

BATCHED = """import time
class Predictor:
    def __init__(self, config):
        pass
    def predict(self, payloads):
        time.sleep(max(p.get("sleep", 0) for p in payloads))
        return [{"n": len(payloads)} for _ in payloads]
"""


def test_request_still_uploading_at_sigterm_is_drained_not_dropped(tmp_path, start_server):
    api = make_api(tmp_path, "upload", "name: upload\nserving:\n  drain_timeout: 10s\n", SLEEPY)
    server = start_server("serve", str(api))
    body = b'{"sleep": 2.5}'  # longer than uvicorn's own 2 s final close: only a real drain saves it
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body[:5])
    time.sleep(0.3)
    server.signal(signal.SIGTERM)
    time.sleep(0.3)
    sock.sendall(body[5:])
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    assert data.startswith(b"HTTP/1.1 200"), data[:300]
    assert server.proc.wait(timeout=15) == 0


def test_batching_admits_up_to_free_slots_even_with_no_queue(tmp_path, start_server):
    api = make_api(tmp_path, "noqueue", "name: noqueue\nserving:\n  max_concurrency: 8\n  max_queue_length: 0\n"
                   "batching:\n  max_batch_size: 8\n  max_batch_delay: 20ms\n", BATCHED)
    server = start_server("serve", str(api))
    # an idle predictor takes a request at once: it never has to wait, so a zero-length queue is no obstacle
    assert [httpx.post(f"{server.base}/noqueue", json={}).status_code for _ in range(5)] == [200] * 5
    # concurrent ones that find the predictor busy would have to wait: with no queue they are refused cleanly
    with cf.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: httpx.post(f"{server.base}/noqueue", json={"sleep": 0.2}, timeout=10)
                              .status_code, range(8)))
    assert 200 in codes and set(codes) <= {200, 503}


def test_timed_out_batch_requests_stop_counting_as_queued(tmp_path, start_server):
    api = make_api(tmp_path, "slowbatch", "name: slowbatch\nserving:\n  max_concurrency: 1\n  max_queue_length: 3\n"
                   "  timeout: 500ms\nbatching:\n  max_batch_size: 1\n  max_batch_delay: 0ms\n", BATCHED)
    server = start_server("serve", str(api))
    with cf.ThreadPoolExecutor(4) as pool:
        first = pool.submit(httpx.post, f"{server.base}/slowbatch", json={"sleep": 1.5}, timeout=10)
        time.sleep(0.1)
        queued = [pool.submit(httpx.post, f"{server.base}/slowbatch", json={}, timeout=10) for _ in range(3)]
        assert [f.result().status_code for f in queued] == [504] * 3
        # the three timed out while queued: the queue is empty again, so new requests are admitted, not refused
        metrics = httpx.get(f"{server.base}/metrics").text
        assert 'myelin_queue_length{api="slowbatch"} 0.0' in metrics
        late = [pool.submit(httpx.post, f"{server.base}/slowbatch", json={}, timeout=10) for _ in range(3)]
        assert 503 not in [f.result().status_code for f in late]
        first.result()


def test_timed_out_requests_waiting_for_a_thread_never_run(tmp_path, start_server):
    api = make_api(tmp_path, "onethread", "name: onethread\nserving:\n  max_concurrency: 6\n  threads: 1\n"
                   "  timeout: 1s\n", SLEEPY)
    server = start_server("serve", str(api))
    with cf.ThreadPoolExecutor(6) as pool:
        codes = sorted(pool.map(lambda _: httpx.post(f"{server.base}/onethread", json={"sleep": 0.6}, timeout=10)
                                .status_code, range(6)))
    assert codes.count(200) >= 1 and set(codes) <= {200, 504}
    # the ones that timed out while waiting for the thread were dropped, so the thread is free at once
    assert httpx.post(f"{server.base}/onethread", json={}, timeout=10).status_code == 200


def test_sigterm_during_a_long_model_load_exits_within_the_grace_period(tmp_path, start_server):
    api = make_api(tmp_path, "slowload", "name: slowload\npredictor:\n  config: {load: 20}\n"
                   "serving:\n  drain_timeout: 2s\n", SLEEPY)
    server = start_server("serve", str(api), wait=False)
    server.wait_ready(status=503)  # up, still loading
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.proc.wait(timeout=15) == 0
    assert time.monotonic() - started < 15  # not the 20 s the load would take


def test_any_load_failure_is_reported_not_stuck_loading(tmp_path, start_server):
    """A bad predictor.env value fails the load like any other error: myelin serve logs it and exits 1."""
    api = make_api(tmp_path, "badenv", 'name: badenv\npredictor:\n  env: {BAD: "a\\0b"}\n', SLEEPY)
    server = start_server("serve", str(api), wait=False)
    assert server.proc.wait(timeout=30) == 1
    assert "badenv failed to load" in server.stderr() and "null" in server.stderr()


def test_non_utf8_api_yaml_is_a_spec_error(tmp_path):
    folder = tmp_path / "latin"
    folder.mkdir()
    (folder / "api.yaml").write_bytes(b"name: caf\xe9\n")
    with pytest.raises(SpecError, match="UTF-8"):
        load_api_spec(folder)


def test_bearer_key_in_a_custom_authorization_header(tmp_path, start_server):
    api = make_api(tmp_path, "bearer", "name: bearer\nnetworking:\n  auth:\n    api_keys_env: KEYS\n"
                   "    header: Authorization\n", SLEEPY)
    server = start_server("serve", str(api), env={"KEYS": "k1"})
    assert httpx.post(f"{server.base}/bearer", json={}, headers={"authorization": "Bearer k1"}).status_code == 200
    assert httpx.post(f"{server.base}/bearer", json={}, headers={"authorization": "Bearer k2"}).status_code == 401
