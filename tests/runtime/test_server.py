"""The HTTP contract of one API served by `myelin serve`, over real loopback HTTP."""

import concurrent.futures as cf
import json
import threading
import time

import httpx
import pytest

APIS = "tests/runtime/apis"


@pytest.fixture
def echo(start_server):
    return start_server("serve", f"{APIS}/echo")


def post(server, mode="echo", **kwargs):
    return httpx.post(f"{server.base}/echo", params={"mode": mode}, timeout=10, **kwargs)


def test_json_in_json_out(echo):
    r = post(echo, json={"a": [1, 2]})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == {"echo": {"a": [1, 2]}, "config": {}}


def test_payload_types_by_content_type(echo):
    r = post(echo, "type", content=b"hello", headers={"content-type": "text/plain"})
    assert r.json() == {"type": "str", "value": "hello"}
    r = post(echo, "type", content=b"\x00\x01", headers={"content-type": "application/octet-stream"})
    assert r.json() == {"type": "bytes", "value": "0001"}
    r = post(echo, "form", data={"a": "1", "b": "x"})
    assert r.json() == {"type": "form", "fields": {"a": "1", "b": "x"}}
    r = post(echo, "form", files={"f": ("a.txt", b"data")}, data={"k": "v"})
    assert r.status_code == 200 and r.json()["fields"]["k"] == "v"


def test_result_types(echo):
    r = post(echo, "numpy", json={})
    assert r.json() == {"array": [0, 1, 2], "scalar": 1.5, "int": 7}
    assert post(echo, "list", json={}).json() == [1, 2, 3]
    r = post(echo, "text", json={})
    assert r.text == "plain text" and r.headers["content-type"].startswith("text/plain")
    r = post(echo, "bytes", json={})
    assert r.content == b"\x00\x01binary" and r.headers["content-type"] == "application/octet-stream"
    r = post(echo, "response", json={})
    assert (r.status_code, r.text, r.headers["x-custom"]) == (201, "custom", "yes")
    assert r.headers["x-request-id"]  # a passed-through Response carries the request id too


def assert_error(r, status, kind):
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()["error"]
    assert body["type"] == kind and body["message"] and body["request_id"] == r.headers["x-request-id"]
    return body


def test_errors_follow_the_contract(echo):
    assert_error(post(echo, content=b"{not json", headers={"content-type": "application/json"}), 400, "bad_request")
    assert_error(httpx.post(f"{echo.base}/nowhere", json={}), 404, "not_found")
    assert_error(httpx.get(f"{echo.base}/echo"), 405, "method_not_allowed")
    body = assert_error(post(echo, "boom", json={}), 500, "predictor_failure")
    assert "secret internal detail" not in body["message"]
    body = assert_error(post(echo, "reject", json={}), 422, "predictor_error")
    assert body["message"] == "payload rejected by the predictor"
    assert_error(post(echo, "unencodable", json={}), 500, "internal")
    # the traceback goes to the log, not to the client
    time.sleep(0.2)
    assert "secret internal detail" in echo.stdout() and "Traceback" in echo.stdout()


def test_body_limit_is_413_with_or_without_content_length(echo):
    assert_error(post(echo, content=b"x" * 2048, headers={"content-type": "text/plain"}), 413, "payload_too_large")

    def chunks():
        for _ in range(8):
            yield b"y" * 512

    assert_error(post(echo, content=chunks(), headers={"content-type": "text/plain"}), 413, "payload_too_large")
    assert post(echo, content=b"x" * 1000, headers={"content-type": "text/plain"}).status_code == 200


def test_request_id_is_echoed_and_logged(echo):
    r = post(echo, json={}, headers={"x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r2 = post(echo, json={})
    generated = r2.headers["x-request-id"]
    assert generated and generated != "abc-123"
    time.sleep(0.2)
    lines = [line for line in echo.log_lines() if line.get("path") == "/echo"]
    by_id = {line["request_id"]: line for line in lines}
    assert set(by_id) >= {"abc-123", generated}
    line = by_id["abc-123"]
    assert {"time", "api", "request_id", "status", "latency_ms"} <= set(line)
    assert (line["api"], line["status"]) == ("echo", 200) and line["latency_ms"] >= 0
    assert len([l for l in lines if l["request_id"] == "abc-123"]) == 1


def test_overload_503_with_retry_after_and_timeout_504(echo):
    # max_concurrency 1 + max_queue_length 1: of 4 simultaneous slow requests, 2 are admitted
    barrier = threading.Barrier(4)

    def slow_request():
        barrier.wait(timeout=30)  # all four leave together, well inside one 0.4 s predict
        return httpx.post(f"{echo.base}/echo", params={"mode": "sleep", "s": "0.4"}, json={}, timeout=10)

    with cf.ThreadPoolExecutor(4) as pool:
        results = [f.result() for f in [pool.submit(slow_request) for _ in range(4)]]
    codes = sorted(r.status_code for r in results)
    assert codes == [200, 200, 503, 503], codes
    for r in results:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "overloaded"
    # timeout is 1s: a 1.5s predict gets a 504
    r = httpx.post(f"{echo.base}/echo", params={"mode": "sleep", "s": "1.5"}, json={}, timeout=10)
    assert_error(r, 504, "timeout")


def test_sync_predict_does_not_block_the_event_loop(echo):
    with cf.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx.post, f"{echo.base}/echo", params={"mode": "sleep", "s": "0.8"}, json={}, timeout=10)
        time.sleep(0.2)
        assert not slow.done()
        # health, readiness and metrics answer while the predict still sleeps
        assert httpx.get(f"{echo.base}/healthz").status_code == 200
        assert httpx.get(f"{echo.base}/readyz").status_code == 200
        metrics = httpx.get(f"{echo.base}/metrics").text
        assert not slow.done()
        assert 'myelin_in_flight_requests{api="echo"} 1.0' in metrics
        assert slow.result().status_code == 200


def test_metrics_names_and_counts(echo):
    for _ in range(3):
        post(echo, json={})
    post(echo, "boom", json={})
    text = httpx.get(f"{echo.base}/metrics").text
    assert 'myelin_requests_total{api="echo",status="200"} 3.0' in text
    assert 'myelin_requests_total{api="echo",status="500"} 1.0' in text
    assert 'myelin_request_duration_seconds_count{api="echo"} 4.0' in text
    for name in ("myelin_in_flight_requests", "myelin_queue_length", "myelin_batch_size", "myelin_ready_processes"):
        assert name in text
    metric_lines = [l for l in text.splitlines() if l and not l.startswith("#")]
    # Myelin's own series and the process collector's (memory, CPU, open files); no python_gc_* noise.
    assert all(l.startswith(("myelin_", "process_")) for l in metric_lines), metric_lines
    assert any(l.startswith("process_resident_memory_bytes") for l in metric_lines)


def test_readyz_503_until_loaded(start_server):
    server = start_server("serve", f"{APIS}/slow-load", wait=False)
    seen = []
    refused = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{server.base}/readyz", timeout=2)
        except httpx.HTTPError:
            time.sleep(0.05)
            continue
        seen.append(r.status_code)
        if r.status_code == 200:
            break
        # while loading: liveness is fine, predictions are refused cleanly
        assert httpx.get(f"{server.base}/healthz").status_code == 200
        early = httpx.post(f"{server.base}/slow-load", json={})
        if early.status_code == 503:
            assert_error(early, 503, "not_ready")
            refused += 1
        else:  # the load finished between the two requests
            assert httpx.get(f"{server.base}/readyz").status_code == 200
        time.sleep(0.1)
    assert 503 in seen and seen[-1] == 200 and refused >= 1
    assert httpx.post(f"{server.base}/slow-load", json={}).json() == {"loaded": True}


def test_async_predict_with_headers_and_custom_endpoint(start_server):
    server = start_server("serve", f"{APIS}/async-echo")
    r = httpx.post(f"{server.base}/v1/async", json={"a": 1}, headers={"x-trace": "t1"})
    assert r.json() == {"echo": {"a": 1}, "user_agent_seen": True, "x_trace": "t1"}
    # concurrent async predicts overlap on the event loop: 4 x 0.5s finish together
    with cf.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: httpx.post(f"{server.base}/v1/async", json={"sleep": 0.5}, timeout=10), range(4)))
    assert [r.status_code for r in results] == [200] * 4
    r = httpx.post(f"{server.base}/v1/async", json={"sleep": 2}, timeout=10)
    assert_error(r, 504, "timeout")
    assert httpx.post(f"{server.base}/async-echo", json={}).status_code == 404


def test_predictor_without_query_params_does_not_get_them(start_server):
    server = start_server("serve", f"{APIS}/helper-import")
    r = httpx.post(f"{server.base}/helper-import?x=1", content=b"world", headers={"content-type": "text/plain"})
    assert r.status_code == 200 and r.text == "hello world!"


def test_spec_from_environment_overrides_api_yaml(start_server):
    from myelin.spec import load_api_spec

    spec = load_api_spec(f"{APIS}/echo").model_copy(update={"name": "renamed"})
    server = start_server("serve", f"{APIS}/echo", env={"MYELIN_API_SPEC": spec.model_dump_json()})
    assert httpx.post(f"{server.base}/renamed", params={"mode": "list"}, json={}).json() == [1, 2, 3]


def test_openapi_describes_the_endpoint(echo):
    doc = httpx.get(f"{echo.base}/openapi.json").json()
    assert "post" in doc["paths"]["/echo"] and "/healthz" in doc["paths"]


def test_info_lists_api_state(echo):
    info = httpx.get(f"{echo.base}/info").json()
    assert info["apis"][0]["name"] == "echo" and info["apis"][0]["state"] == "ready"
    assert info["apis"][0]["spec"]["serving"]["timeout"] == "1s"
