"""wire.py: one write per response of known length, uvicorn's behaviour everywhere else, and the keep-alive
deadline without a timer per response. Driven through the server's real protocol class (protection.py) on a
recording transport, so every `transport.write` is seen."""

from __future__ import annotations

import asyncio

import pytest
import uvicorn
from uvicorn.server import ServerState

from myelin.metrics import Metrics
from myelin.process import uvicorn_config
from myelin.settings import Settings


class Recorder:
    """An asyncio transport that records writes (one entry per write call) and close."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def writelines(self, chunks) -> None:
        self.writes.append(b"".join(chunks))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, *args, **kwargs) -> None: ...


def request(method: str = "POST", path: str = "/", body: bytes = b"{}", version: str = "1.1",
            headers: str = "") -> bytes:
    return (f"{method} {path} HTTP/{version}\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{headers}\r\n").encode() + body


async def serve_once(app, data: bytes, keep_alive: float = 5.0, settle: float = 0.05) -> Recorder:
    config = uvicorn_config(app, "127.0.0.1", 0, Settings(), )
    config.timeout_keep_alive = keep_alive
    config.load()
    protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = Recorder()
    protocol.connection_made(transport)
    protocol.data_received(data)
    await asyncio.sleep(settle)
    protocol._test_handle = protocol  # keep it alive for the caller
    transport.protocol = protocol
    return transport


def asgi(*messages: dict):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        for message in messages:
            await send(message)
    return app


START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json"),
                                                                     (b"content-length", b"2")]}
BODY = {"type": "http.response.body", "body": b"{}"}


def run(coro):
    return asyncio.run(coro)


def test_a_response_of_known_length_is_one_write():
    t = run(serve_once(asgi(START, BODY), request()))
    assert len(t.writes) == 1, t.writes
    head, body = t.writes[0].split(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 2" in head
    assert body == b"{}" and not t.closed


def test_a_response_of_known_length_in_parts_writes_head_with_the_first_part():
    start = {**START, "headers": [(b"content-length", b"6")]}
    parts = [{"type": "http.response.body", "body": b"ab", "more_body": True},
             {"type": "http.response.body", "body": b"cdef"}]
    t = run(serve_once(asgi(start, *parts), request()))
    assert len(t.writes) == 2 and t.writes[0].endswith(b"\r\n\r\nab") and t.writes[1] == b"cdef"


def test_a_chunked_response_writes_its_head_at_once():
    start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
    parts = [{"type": "http.response.body", "body": b"one", "more_body": True},
             {"type": "http.response.body", "body": b""}]
    t = run(serve_once(asgi(start, *parts), request()))
    assert t.writes[0].endswith(b"transfer-encoding: chunked\r\n\r\n")  # the head alone: a stream is not held
    assert t.writes[1:] == [b"3\r\none\r\n", b"0\r\n\r\n"]


def test_head_and_no_body_statuses_write_no_body():
    t = run(serve_once(asgi(START, BODY), request("HEAD", body=b"")))
    assert len(t.writes) == 1 and t.writes[0].endswith(b"\r\n\r\n")
    no_content = {"type": "http.response.start", "status": 204, "headers": []}
    t = run(serve_once(asgi(no_content, {"type": "http.response.body", "body": b""}), request()))
    writes = [w for w in t.writes if w]  # an empty write sends nothing (uvicorn makes one for the empty body)
    assert len(writes) == 1 and writes[0].startswith(b"HTTP/1.1 204") and b"transfer-encoding" not in writes[0]


def test_connection_close_from_the_app_or_an_http10_client_closes_after_the_write():
    close = {**START, "headers": [*START["headers"], (b"connection", b"close")]}
    t = run(serve_once(asgi(close, BODY), request()))
    assert len(t.writes) == 1 and t.closed
    t = run(serve_once(asgi(START, BODY), request(version="1.0")))
    assert len(t.writes) == 1 and b"connection: close\r\n" in t.writes[0] and t.closed


@pytest.mark.parametrize("header", [(b"x-bad name", b"v"), (b"x-ok", b"a\x01b"), (b"x-ok", b"a\nb")])
def test_invalid_headers_are_refused_as_uvicorn_refuses_them(header):
    """The same characters as uvicorn's per-header checks (checked once over all names and values), with uvicorn's
    outcome: the app's send raises, the response counts as started, so the connection is closed with nothing
    written."""
    bad = {**START, "headers": [*START["headers"], header]}
    t = run(serve_once(asgi(bad, BODY), request()))
    assert t.writes == [] and t.closed


def test_body_longer_than_content_length_is_an_error_not_extra_bytes():
    long_body = {"type": "http.response.body", "body": b"{}{}"}
    t = run(serve_once(asgi(START, long_body), request()))
    assert b"{}{}" not in b"".join(t.writes)


def test_keep_alive_closes_an_idle_connection_and_only_an_idle_one():
    async def scenario():
        t = await serve_once(asgi(START, BODY), request(), keep_alive=0.3, settle=0.1)
        protocol = t.protocol
        assert not t.closed
        await asyncio.sleep(0.15)  # 0.25 s after the answer: a second request keeps the connection busy
        protocol.data_received(request())
        await asyncio.sleep(0.15)  # 0.3 s after the first answer, 0.15 s after the second: still open
        assert not t.closed and b"".join(t.writes).count(b"HTTP/1.1 200") == 2
        await asyncio.sleep(0.4)  # idle past 0.3 s since the last answer
        assert t.closed
    run(scenario())


def test_myelin_app_answers_predict_in_one_write(tmp_path):
    from myelin.server import MyelinApp
    from myelin.spec import load_api_spec
    (tmp_path / "api.yaml").write_text("name: echo\npredictor: {path: p.py}\nnetworking: {endpoint: /echo}\n")
    (tmp_path / "p.py").write_text("class Predictor:\n    def __init__(self, config):\n        pass\n"
                                   "    async def predict(self, payload):\n        return payload\n")
    app = MyelinApp([(tmp_path, load_api_spec(tmp_path))], settings=Settings())

    async def scenario():
        sent = []
        queue: asyncio.Queue = asyncio.Queue()
        await queue.put({"type": "lifespan.startup"})

        async def lifespan_send(message):
            sent.append(message)
        asyncio.get_running_loop().create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                                   queue.get, lifespan_send))
        for _ in range(500):
            await asyncio.sleep(0.01)
            if all(r.state.value == "ready" for r in app.runtimes.values()):
                break
        ids = ["client-id-1", "bad id", "caf\u00e9-id"]  # the last: bytes above 0x7f (obs-text, which HTTP admits)
        writes = []
        for rid in ids:
            t = await serve_once(app, request(path="/echo", body=b'{"a":1}', headers=f"x-request-id: {rid}\r\n"),
                                 settle=0.2)
            writes.append(t.writes)
        return writes, ids

    writes, ids = run(scenario())
    assert all(len(w) == 1 for w in writes), writes
    heads = [w[0].split(b"\r\n\r\n")[0] for w in writes]
    assert all(w[0].endswith(b'\r\n\r\n{"a":1}') and w[0].startswith(b"HTTP/1.1 200 OK\r\n") for w in writes)
    assert b"x-request-id: client-id-1\r\n" in heads[0] + b"\r\n"
    # An id a header cannot carry as is (a space, a control character) is replaced by a fresh one, never echoed.
    # (Compared with the client's whole id: a fresh id is random hex, which may well contain "caf".)
    for head, client_id in zip(heads[1:], ids[1:]):
        rid = [line for line in head.split(b"\r\n") if line.startswith(b"x-request-id: ")]
        assert len(rid) == 1 and len(rid[0]) > len(b"x-request-id: "), rid
        fresh = rid[0].removeprefix(b"x-request-id: ")
        assert client_id.encode() not in fresh and b" " not in fresh and fresh.isascii(), rid


def test_folded_request_metrics_equal_the_per_request_series(monkeypatch):
    """observe() counts in plain integers and fold() adds them to the series: a scrape shows exactly what
    prometheus-client's own counter and histogram would (the multiprocess path keeps those per request)."""
    from prometheus_client import generate_latest

    observations = [(200, 0.0004), (200, 0.001), (200, 0.0011), (503, 0.02), (200, 7.5), (500, 99.0), (200, 0.001)]
    folded = Metrics()
    direct = Metrics()
    a, b = folded.for_api("x"), direct.for_api("x")
    for status, seconds in observations:
        a.observe(status, seconds)
        b._observe_shared(status, seconds)
    assert generate_latest(folded.registry).count(b"myelin_requests_total{") == 0  # not folded before a scrape
    families = lambda text: sorted(line for line in text.decode().splitlines()  # noqa: E731
                                   if line.startswith(("myelin_requests_total", "myelin_request_duration_seconds")))
    assert families(folded.exposition()) == families(direct.exposition())
    a.observe(200, 0.003)
    b._observe_shared(200, 0.003)
    assert families(folded.exposition()) == families(direct.exposition())  # a second fold adds only what is new
