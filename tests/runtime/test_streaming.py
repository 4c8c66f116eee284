"""Streaming predictions (a generator `predict`) over real servers on loopback, sync and async generators.

The predictor (apis/streamer/predictor.py) is scripted by its payload. Where a test needs "the
generator is still running", the generator waits for a file the test creates only after it has
seen the first item: no wall-clock thresholds.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import ServerProcess
from myelin.streaming import NDJSON_FRAMING, SSE_FRAMING, framing_for

SOURCE = Path(__file__).resolve().parent / "apis" / "streamer" / "predictor.py"
CLASSES = {"sync": "SyncStreamer", "async": "AsyncStreamer"}
SSE = {"accept": "text/event-stream"}


def streamer_api(root: Path, kind: str, name: str = "streamer", **serving) -> Path:
    """An API folder serving the scripted streamer as a `kind` generator, with these serving limits."""
    folder = root / f"{name}-{kind}"
    folder.mkdir(parents=True)
    shutil.copy(SOURCE, folder / "predictor.py")
    limits = {"max_concurrency": 1, "max_queue_length": 1, "timeout": "5s", **serving}
    (folder / "api.yaml").write_text(
        f"name: {name}\npredictor:\n  class_name: {CLASSES[kind]}\nserving:\n"
        + "".join(f"  {key}: {value}\n" for key, value in limits.items())
    )
    return folder


def open_stream(server, body, headers=None, endpoint="/streamer", timeout=15.0):
    return httpx.stream("POST", server.base + endpoint, json=body, headers=headers or {}, timeout=timeout)


def ndjson(response) -> list:
    return [json.loads(line) for line in response.iter_lines() if line]


def sse_events(text: str) -> list[str]:
    return [event for event in text.split("\n\n") if event]


def wait_for(condition, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what} not seen within {timeout}s")


def log_line(server, request_id: str) -> dict:
    return wait_for(lambda: next((l for l in server.log_lines() if l.get("request_id") == request_id
                                  and "status" in l), None), what=f"log line of {request_id}")


def metric(server, name: str, api: str = "streamer") -> float:
    for line in httpx.get(server.base + "/metrics").text.splitlines():
        if line.startswith(f'{name}{{api="{api}"}} '):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def error_json(error_type: str, message: str, request_id: str) -> bytes:
    return json.dumps({"error": {"type": error_type, "message": message, "request_id": request_id}},
                      separators=(",", ":")).encode()


@pytest.fixture(scope="module", params=["sync", "async"])
def served(request, tmp_path_factory):
    """(kind, server): one module-wide server per generator kind, one stream at a time (max_concurrency 1)."""
    root = tmp_path_factory.mktemp(f"streamer-{request.param}")
    server = ServerProcess(["serve", str(streamer_api(root, request.param))], root)
    server.wait_ready()
    yield request.param, server
    server.stop()


# ------------------------------------------------------------------------------------------ streaming


def test_first_item_arrives_while_the_generator_still_runs(served, tmp_path):
    _, server = served
    go = tmp_path / "go"
    with open_stream(server, {"steps": [{"yield": "first"}, {"wait": str(go)}, {"yield": "last"}]}) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        # Buffered until the end, this line could not arrive: the generator waits for `go`, made only now.
        assert json.loads(next(lines)) == "first"
        go.touch()
        assert [json.loads(line) for line in lines if line] == [{"waited": True}, "last"]


ITEMS = [{"a": 1, "b": [1.5, None]}, "plain", "two\nlines", 7, [1, 2], ""]


def test_ndjson_framing_is_exact(served):
    _, server = served
    with open_stream(server, {"steps": [{"yield": item} for item in ITEMS]}) as r:
        body = b"".join(r.iter_raw())
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-ndjson"
    assert r.headers["cache-control"] == "no-cache" and r.headers["x-accel-buffering"] == "no"
    assert r.headers["transfer-encoding"] == "chunked" and "content-length" not in r.headers
    assert r.headers["x-request-id"]
    assert body == b'{"a":1,"b":[1.5,null]}\n"plain"\n"two\\nlines"\n7\n[1,2]\n""\n'


def test_sse_framing_is_exact(served):
    _, server = served
    with open_stream(server, {"steps": [{"yield": item} for item in ITEMS]}, SSE) as r:
        body = b"".join(r.iter_raw())
    assert r.headers["content-type"] == "text/event-stream"
    assert r.headers["cache-control"] == "no-cache" and r.headers["x-accel-buffering"] == "no"
    assert body == (b'data: {"a":1,"b":[1.5,null]}\n\ndata: plain\n\ndata: two\ndata: lines\n\n'
                    b"data: 7\n\ndata: [1,2]\n\ndata: \n\n")


def test_a_generator_without_items_is_an_empty_stream(served):
    _, server = served
    r = httpx.post(server.base + "/streamer", json={"steps": []})
    assert r.status_code == 200 and r.content == b"" and r.headers["content-type"] == "application/x-ndjson"


def test_errors_before_the_first_item_are_ordinary_json_errors(served):
    _, server = served
    refused = httpx.post(server.base + "/streamer", json={"steps": [{"raise": "predictor"}]})
    assert refused.status_code == 422 and refused.headers["content-type"] == "application/json"
    assert refused.json() == {"error": {"type": "predictor_error", "message": "this item is refused",
                                        "request_id": refused.headers["x-request-id"]}}
    crashed = httpx.post(server.base + "/streamer", json={"steps": [{"raise": "crash"}]}, headers={"x-request-id": "pre-crash"})
    assert crashed.status_code == 500
    assert crashed.json()["error"] == {"type": "predictor_failure", "message": "the predictor failed; see the server log",
                                       "request_id": "pre-crash"}
    assert log_line(server, "pre-crash")["status"] == 500
    traceback_line = wait_for(lambda: next((l for l in server.log_lines() if l.get("message") == "predict raised"
                                            and l.get("request_id") == "pre-crash"), None))
    assert "generator exploded" in traceback_line["traceback"] and "exploded" not in crashed.text
    bad = httpx.post(server.base + "/streamer", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "bad_request"


@pytest.mark.parametrize("fail, status, error_type, message", [
    ("predictor", 422, "predictor_error", "this item is refused"),
    ("crash", 500, "predictor_failure", "the predictor failed; see the server log"),
    ("timeout", 500, "predictor_failure", "the predictor failed; see the server log"),
])
def test_an_error_after_the_first_item_ends_the_stream(served, fail, status, error_type, message):
    kind, server = served
    steps = [{"yield": 1}, {"raise": fail}, {"yield": 2}]
    rid = f"after-{fail}-{kind}"
    with open_stream(server, {"steps": steps}, {"x-request-id": rid}) as r:
        assert r.status_code == 200  # sent with the first item, before the error
        assert ndjson(r) == [1, {"error": {"type": error_type, "message": message, "request_id": rid}}]
    line = log_line(server, rid)
    assert line["status"] == status and line["error"] == error_type  # the log and metrics count the failure
    with open_stream(server, {"steps": steps}, {**SSE, "x-request-id": rid + "-sse"}) as r:
        body = b"".join(r.iter_raw())
    assert body == b"data: 1\n\nevent: error\ndata: " + error_json(error_type, message, rid + "-sse") + b"\n\n"
    if fail == "crash":
        assert "exploded" not in body.decode()
        assert any(l.get("message") == "predict raised" and "generator exploded" in l["traceback"]
                   for l in server.log_lines() if l.get("request_id") == rid)


@pytest.mark.parametrize("where", ["first", "later"])
def test_an_unencodable_item_is_a_500_logged_once(served, where):
    """Before the first item: the JSON 500; after items: an error item. Either way one log event with the detail."""
    kind, server = served
    rid = f"unencodable-{where}-{kind}"
    steps = [{"unencodable": True}] if where == "first" else [{"yield": 1}, {"yield": 2}, {"unencodable": True}]
    message = "a streamed item could not be encoded; see the server log"
    with open_stream(server, {"steps": steps}, {"x-request-id": rid}) as r:
        if where == "first":
            r.read()
            assert r.status_code == 500 and r.json() == {"error": {"type": "internal", "message": message,
                                                                   "request_id": rid}}
        else:
            assert r.status_code == 200
            assert ndjson(r) == [1, 2, {"error": {"type": "internal", "message": message, "request_id": rid}}]
    assert log_line(server, rid)["status"] == 500
    events = [l for l in server.log_lines() if l.get("request_id") == rid and "status" not in l]
    assert [e["message"] for e in events] == ["a streamed item could not be encoded"], events
    assert "object" in events[0]["error"]


def test_a_stream_counts_in_flight_until_its_last_byte(served, tmp_path):
    _, server = served
    go = tmp_path / "go"
    first_items = metric(server, "myelin_time_to_first_item_seconds_count")
    durations = metric(server, "myelin_request_duration_seconds_count")
    with open_stream(server, {"steps": [{"yield": 1}, {"wait": str(go)}]}, {"x-request-id": "gauge"}) as r:
        lines = r.iter_lines()
        assert next(lines) == "1"
        assert metric(server, "myelin_in_flight_requests") == 1.0
        assert metric(server, "myelin_time_to_first_item_seconds_count") == first_items + 1
        time.sleep(0.3)  # the stream stays open at least this long: its duration must cover it
        go.touch()
        assert [json.loads(line) for line in lines if line] == [{"waited": True}]
    wait_for(lambda: metric(server, "myelin_in_flight_requests") == 0.0, what="in-flight back to 0")
    assert metric(server, "myelin_request_duration_seconds_count") == durations + 1
    line = log_line(server, "gauge")
    assert line["status"] == 200 and line["latency_ms"] >= 300  # the whole stream, not the first item


def test_a_disconnect_closes_the_generator_and_frees_the_slot(served, tmp_path):
    kind, server = served
    marker = tmp_path / "closed"
    body = {"steps": [{"forever": 0.05}], "marker": str(marker)}
    with open_stream(server, body, {"x-request-id": f"gone-{kind}"}) as r:
        lines = r.iter_lines()
        assert [json.loads(next(lines)) for _ in range(2)] == [0, 1]
    # Leaving the block closed the connection mid-stream: the generator's finally runs ...
    wait_for(marker.exists, what="the generator's finally")
    line = log_line(server, f"gone-{kind}")
    assert line["status"] == 499 and line["error"] == "client_disconnected"
    # ... and its slot is free: with max_concurrency 1 the next stream runs (an endless one never would).
    r = httpx.post(server.base + "/streamer", json={"steps": [{"yield": "next"}]}, timeout=10)
    assert r.status_code == 200 and r.text == '"next"\n'
    assert metric(server, "myelin_in_flight_requests") == 0.0


@pytest.mark.parametrize("served", ["sync"], indirect=True)  # an async generator runs on the loop by design
def test_a_sync_generator_runs_off_the_event_loop(served, tmp_path):
    _, server = served
    go = tmp_path / "go"
    result: list = []
    # Before its first item the generator blocks (in a pool thread) until `go` exists.
    client = threading.Thread(target=lambda: result.append(httpx.post(
        server.base + "/streamer", json={"steps": [{"wait": str(go)}, {"yield": "done"}]}, timeout=30)))
    client.start()
    wait_for(lambda: metric(server, "myelin_in_flight_requests") == 1.0, what="the stream in flight")
    assert httpx.get(server.base + "/healthz", timeout=5).status_code == 200  # the loop answers meanwhile
    go.touch()
    client.join(30)
    assert result[0].status_code == 200 and result[0].text == '{"waited":true}\n"done"\n'


# ------------------------------------------------------------------------------------------ limits


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_serving_timeout_bounds_the_first_item_and_each_gap(tmp_path, start_server, kind):
    api = streamer_api(tmp_path, kind, timeout="1s", max_concurrency=4, threads=4, max_stream_duration="3s")
    server = start_server("serve", str(api))
    # No first item within serving.timeout: the ordinary 504.
    late = httpx.post(server.base + "/streamer", json={"steps": [{"sleep": 2.5}, {"yield": 1}]}, timeout=10)
    assert late.status_code == 504 and late.json()["error"]["type"] == "timeout"
    # A gap longer than serving.timeout after the first item: the stream ends with the timeout error.
    marker = tmp_path / "gap-closed"
    body = {"steps": [{"yield": 1}, {"sleep": 2.5}, {"yield": 2}], "marker": str(marker)}
    with open_stream(server, body, {"x-request-id": "gap"}) as r:
        items = ndjson(r)
    assert items == [1, {"error": {"type": "timeout", "request_id": "gap",
                                   "message": "no next item within the 1s timeout (serving.timeout)"}}]
    assert log_line(server, "gap")["status"] == 504
    wait_for(marker.exists, what="the timed-out generator's finally")  # sync: once its sleep returns
    # A stream may run longer than serving.timeout in total; serving.max_stream_duration bounds it.
    with open_stream(server, {"steps": [{"forever": 0.1}]}, {"x-request-id": "long"}) as r:
        items = ndjson(r)
    assert items[:12] == list(range(12))  # 1.2 s of items: longer than the 1 s timeout
    assert items[-1] == {"error": {"type": "timeout", "request_id": "long",
                                   "message": "the stream ran past serving.max_stream_duration (3s)"}}


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_client_that_stops_reading_is_dropped_and_frees_the_slot(tmp_path, start_server, kind):
    api = streamer_api(tmp_path, kind, timeout="1s")
    server = start_server("serve", str(api))
    body = json.dumps({"steps": [{"yield": "x" * 65536, "times": 2000}]}).encode()  # 128 MiB: far beyond the buffers
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(b"POST /streamer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Request-ID: stalled\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    try:
        # The client reads nothing: once the buffers are full a write cannot complete within serving.timeout.
        line = log_line(server, "stalled")
        assert line["status"] == 499 and line["error"] == "client_stalled"
        r = httpx.post(server.base + "/streamer", json={"steps": [{"yield": "next"}]}, timeout=10)
        assert r.status_code == 200 and r.text == '"next"\n'
    finally:
        sock.close()


# ------------------------------------------------------------------------------------------ drain


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_sigterm_lets_an_open_stream_finish(tmp_path, start_server, kind):
    server = start_server("serve", str(streamer_api(tmp_path, kind, drain_timeout="20s")))
    go = tmp_path / "go"
    with open_stream(server, {"steps": [{"yield": "first"}, {"wait": str(go)}, {"yield": "last"}]}) as r:
        lines = r.iter_lines()
        assert json.loads(next(lines)) == "first"
        server.signal(signal.SIGTERM)
        wait_for(lambda: httpx.get(server.base + "/readyz").status_code == 503, what="readiness 503")
        refused = httpx.post(server.base + "/streamer", json={"steps": []})
        assert refused.status_code == 503 and refused.json()["error"]["type"] == "shutting_down"
        go.touch()
        assert [json.loads(line) for line in lines if line] == [{"waited": True}, "last"]
    assert server.proc.wait(timeout=15) == 0


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_drain_timeout_ends_open_streams_with_an_error_event(tmp_path, start_server, kind):
    server = start_server("serve", str(streamer_api(tmp_path, kind, drain_timeout="1s")))
    marker = tmp_path / "closed"
    with open_stream(server, {"steps": [{"forever": 0.05}], "marker": str(marker)},
                     {**SSE, "x-request-id": "drained"}) as r:
        chunks = r.iter_text()
        text = next(chunks)
        assert text.startswith("data: 0\n\n")
        server.signal(signal.SIGTERM)
        text += "".join(chunks)  # runs past the 1 s grace period, then ends
    events = sse_events(text)
    assert events[:5] == [f"data: {n}" for n in range(5)]
    message = "the server is shutting down: the stream was ended after serving.drain_timeout"
    assert events[-1] == "event: error\ndata: " + error_json("shutting_down", message, "drained").decode()
    assert server.proc.wait(timeout=15) == 0
    assert marker.exists()
    assert log_line(server, "drained")["status"] == 503


# ------------------------------------------------------------------------------------------ myelin local


def test_streams_under_myelin_local(tmp_path, start_server):
    apis = tmp_path / "apis"
    streamer_api(apis, "sync")
    streamer_api(apis, "async", name="streamer-async")
    server = start_server("local", str(apis), "--no-reload")
    for endpoint in ("/streamer", "/streamer-async"):
        go = tmp_path / f"go{endpoint.replace('/', '-')}"
        with open_stream(server, {"steps": [{"yield": 1}, {"wait": str(go)}, {"yield": 2}]}, SSE, endpoint) as r:
            chunks = r.iter_text()
            assert next(chunks) == "data: 1\n\n"
            go.touch()
            assert "".join(chunks) == 'data: {"waited":true}\n\ndata: 2\n\n'


# ------------------------------------------------------------------------------------------ framing, in-process


def test_framing_of_numpy_and_the_accept_header():
    assert NDJSON_FRAMING.item(np.arange(3)) == b"[0,1,2]\n"
    assert SSE_FRAMING.item(np.float32(0.5)) == b"data: 0.5\n\n"
    assert SSE_FRAMING.item("a\r\nb\rc") == b"data: a\ndata: b\ndata: c\n\n"
    with pytest.raises(TypeError):
        NDJSON_FRAMING.item(b"raw bytes")
    assert framing_for([(b"accept", b"text/html, Text/Event-Stream;q=0.9")]) is SSE_FRAMING
    assert framing_for([(b"accept", b"application/json")]) is NDJSON_FRAMING
    assert framing_for([]) is NDJSON_FRAMING
