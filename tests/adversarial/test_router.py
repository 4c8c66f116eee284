"""The `myelin local` router is transparent and lets nothing pile up (issue 18 items 7 to 11).

Hostile clients against a real `myelin local` on 127.0.0.1 (stopped by pid): clients that leave while their
answer is being computed, clients that never read, a slow upload across a reload, nested endpoints, and the
smaller defects (control characters, secrets in errors, header whitespace, headers added, responses without a
log line, two `date` headers, whole bodies buffered)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, ServerProcess

from tests.reliability.helpers import rss_kb
from tests.adversarial.helpers import wait_for

ECHO = """
import os
import time

VERSION = {version}
ANSWERS = {{}}  # one big answer per size, shared by every request (what the clients pin is what is unsent)


class Predictor:
    def __init__(self, config):
        {init}

    def predict(self, payload, query_params, headers):
        if query_params.get("big"):
            return ANSWERS.setdefault(int(query_params["big"]), b"x" * int(query_params["big"]))
        return {{"pid": os.getpid(), "version": VERSION, "headers": dict(headers),
                 "size": len(payload) if isinstance(payload, (bytes, str)) else None}}
"""


def make_api(root: Path, name: str, yaml: str = "", version: int = 1, init: str = "pass",
             predictor: str | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "api.yaml").write_text(f"name: {name}\n{yaml}")
    write(folder / "predictor.py", predictor or ECHO.format(version=version, init=init))
    return folder


def write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp~")
    tmp.write_text(text)
    tmp.replace(path)


def info(server: ServerProcess, name: str) -> dict:
    return next(a for a in httpx.get(f"{server.base}/info", timeout=5).json()["apis"] if a["name"] == name)


def lines_of(server: ServerProcess, request_id: str) -> list[dict]:
    return [e for e in server.log_lines() if e.get("request_id") == request_id]


def raw_request(port: int, head: bytes, body: bytes = b"", read: bool = True, rcvbuf: int | None = None) -> socket.socket | bytes:
    """Send bytes as they are; the whole answer (read=True, the request says Connection: close) or the socket."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    sock.sendall(head + body)
    if not read:
        return sock
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    return data


def split(answer: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
    return int(lines[0].split()[1]), headers, body


@pytest.fixture
def local(tmp_path):
    servers: list[ServerProcess] = []

    def start(root: Path, env: dict[str, str] | None = None) -> ServerProcess:
        server = ServerProcess(["local", str(root)], tmp_path, env)
        servers.append(server)
        server.wait_ready()
        server.wait_settled()
        return server

    yield start
    for server in servers:
        server.stop()


# -- item 7: a client that leaves is passed through at once ------------------------------------------------------


def test_a_client_that_leaves_closes_the_upstream_at_once_and_is_logged_499(local, tmp_path):
    root = tmp_path / "apis"
    folder = root / "streamer"
    folder.mkdir(parents=True)
    (folder / "api.yaml").write_text("name: streamer\npredictor:\n  class_name: AsyncStreamer\n"
                                     "serving:\n  max_concurrency: 4\n  timeout: 30s\n")
    (folder / "predictor.py").write_text((ROOT / "tests/runtime/apis/streamer/predictor.py").read_text())
    server = local(root)
    cases = {
        # No item yet: the router is waiting for the answer's headers when the client leaves.
        "before-headers": [{"sleep": 25}, {"yield": 1}],
        # One item read, then nothing flows: the client leaves between chunks.
        "between-chunks": [{"yield": 1}, {"sleep": 25}, {"yield": 2}],
    }
    for name, steps in cases.items():
        marker = tmp_path / f"{name}.closed"
        body = json.dumps({"steps": steps, "marker": str(marker)}).encode()
        sock = raw_request(server.port, b"POST /streamer HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                           b"X-Request-ID: " + name.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body), body,
                           read=False)
        if name == "between-chunks":
            got = b""
            while b"\r\n\r\n" not in got or not got.partition(b"\r\n\r\n")[2]:
                got += sock.recv(65536)  # the answer's headers and its first item
        else:
            wait_for(lambda: 'myelin_in_flight_requests{api="streamer"} 1.0' in
                     httpx.get(f"{server.base}/metrics").text, 20, "the stream running")
        left = time.monotonic()
        sock.close()
        # The generator's `finally` runs long before its 25 s sleep would have ended.
        wait_for(lambda: marker.exists(), 10, f"{name}: the generator closed", step=0.01)
        print(f"\n{name}: the generator's finally ran {time.monotonic() - left:.2f}s after the client left")
        logged = wait_for(lambda: lines_of(server, name), 10, f"{name}: its request line")
        assert [(e["status"], e["error"]) for e in logged] == [(499, "client_disconnected")], logged


# -- item 8: clients that never read ----------------------------------------------------------------------------


def test_clients_that_never_read_release_the_router_and_the_api_memory(local, tmp_path):
    """Two waves of 50 clients that never read an 8 MiB answer. The write deadline (the router's server runs the
    same protocol as the API's) aborts each; the router then closes its upstream connection and releases the
    request: its sockets, the in-flight count and the API process's memory come back (the second wave reuses
    what the first one freed), and an API scaled to zero unloads as if they had never come."""
    root = tmp_path / "apis"
    make_api(root, "big", "serving:\n  max_concurrency: 8\n  max_queue_length: 200\n  threads: 8\n")
    make_api(root, "sleepy", "serving:\n  max_concurrency: 8\n  max_queue_length: 200\n"
                             "autoscaling:\n  min_replicas: 0\n  downscale_stabilization: 2s\n")
    server = local(root, env={"MYELIN_WRITE_TIMEOUT": "2"})
    router = server.proc.pid
    size = 8 * 2**20

    def sockets(pid: int) -> int:
        count = 0
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                count += os.readlink(fd).startswith("socket:")
            except FileNotFoundError:  # closed meanwhile
                pass
        return count

    assert len(httpx.post(f"{server.base}/big", json={}, params={"big": size}).content) == size
    api_pid = httpx.post(f"{server.base}/big", json={}).json()["pid"]
    # The warm standby for sleepy (started once nothing loads) holds 3 of the router's sockets (its stdio pipes,
    # socket pairs under uvloop) from then on: part of the idle count.
    wait_for(lambda: (httpx.get(f"{server.base}/info").json().get("standby") or {}).get("state") == "ready", 60,
             "the warm standby ready")
    idle, rss_before = sockets(router), rss_kb(api_pid)
    head = (b"POST /%s?big=" + str(size).encode() + b" HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: 2\r\n\r\n{}")
    held, peaks, after = [], [], []
    try:
        for wave in range(2):
            clients = [raw_request(server.port, head % b"big", read=False, rcvbuf=4096) for _ in range(50)]
            clients += [raw_request(server.port, head % b"sleepy", read=False, rcvbuf=4096) for _ in range(5)]
            held += clients  # never read, never closed: only the router can end these connections
            peaks.append(wait_for(lambda: sockets(router) >= idle + 55 and sockets(router), 60, "connected"))
            wait_for(lambda: sockets(router) <= idle, 60, f"wave {wave}: the router's connections closed", step=0.2)
            wait_for(lambda: info(server, "big")["in_flight"] == 0, 30, f"wave {wave}: nothing in flight")
            after.append(rss_kb(api_pid))
        wait_for(lambda: info(server, "sleepy")["state"] == "idle", 60, "sleepy unloaded after idling", step=0.2)
    finally:
        for sock in held:
            sock.close()
    print(f"\n2 x 50 non-reading clients of 8 MiB: router sockets {idle} -> {peaks} -> {sockets(router)}, "
          f"API RSS {rss_before // 1024} -> {[r // 1024 for r in after]} MiB")
    assert after[-1] - after[0] < 64 * 1024, f"the API's RSS kept growing across waves: {after}"
    assert max(after) - rss_before < 50 * size // 1024 // 2, f"half a wave's answers still pinned: {after}"
    assert httpx.post(f"{server.base}/big", json={}).status_code == 200


# -- item 9: a reload during a slow upload -----------------------------------------------------------------------


def test_a_reload_during_a_slow_upload_does_not_fail_the_request(local, tmp_path):
    root = tmp_path / "apis"
    folder = make_api(root, "uploads", "serving:\n  drain_timeout: 1s\n")
    server = local(root)
    reloaded = threading.Event()
    pieces = [b'{"pad": "', *[b"x" * 1000] * 20, b'"}']

    def slow_body():
        yield pieces[0]
        yield pieces[1]
        reloaded.wait(60)  # the upload goes on past the reload and the old version's drain timeout
        yield from pieces[2:]

    def upload():
        return httpx.post(f"{server.base}/uploads", content=slow_body(), timeout=60,
                          headers={"content-type": "application/json",
                                   "content-length": str(sum(map(len, pieces)))})

    result: list = []
    thread = threading.Thread(target=lambda: result.append(upload()))
    thread.start()
    try:
        time.sleep(0.5)
        write(folder / "predictor.py", ECHO.format(version=2, init="pass"))
        wait_for(lambda: any(e.get("message") == "serving" and e.get("version") == 2 for e in server.log_lines()),
                 60, "version 2 serving")
        time.sleep(2.0)  # longer than the old version's drain timeout
    finally:
        reloaded.set()
        thread.join(60)
    (answer,) = result
    assert answer.status_code == 200, answer.text
    assert answer.json()["version"] == 1  # the version it was sent to answered it
    assert httpx.post(f"{server.base}/uploads", json={}).json()["version"] == 2


# -- item 10: longest-prefix routing ---------------------------------------------------------------------------------


def test_nested_endpoints_route_to_the_longest_prefix_also_after_a_reload(local, tmp_path):
    from tests.async_jobs.conftest import PREDICTOR as JOBS_PREDICTOR

    root = tmp_path / "apis"
    make_api(root, "outer", "networking:\n  endpoint: /a\n")
    inner = root / "inner"
    inner.mkdir()
    (inner / "api.yaml").write_text("name: inner\nkind: AsyncAPI\nnetworking:\n  endpoint: /a/b\n")
    write(inner / "predictor.py", JOBS_PREDICTOR.read_text())
    server = local(root, env={"MYELIN_STATE_DIR": str(tmp_path / "state")})
    job = httpx.post(f"{server.base}/a/b", json={"n": 3}).json()["id"]
    assert wait_for(lambda: httpx.get(f"{server.base}/a/b/{job}").json()["status"] == "completed", 30, "done")
    write(inner / "predictor.py", JOBS_PREDICTOR.read_text() + "\n# version 2\n")
    wait_for(lambda: info(server, "inner")["version"] == 2, 60, "inner reloaded")
    after = httpx.get(f"{server.base}/a/b/{job}")
    assert after.status_code == 200 and after.json()["result"] == {"n": 3, "square": 9}
    assert "version" in httpx.post(f"{server.base}/a", json={}).json()  # /a is still /a


def test_route_is_the_longest_matching_endpoint_whatever_the_order():
    import io

    from myelin.local.console import Console
    from myelin.local.manager import LocalApi, LocalServer

    server = LocalServer(Path("/nonexistent"), Console(tty=False, out=io.StringIO(), err=io.StringIO()), "x")
    outer, inner, other = LocalApi(Path("/o")), LocalApi(Path("/i")), LocalApi(Path("/x"))
    for order in ([("/a/b", inner), ("/a", outer)], [("/a", outer), ("/a/b", inner)]):
        server.routes = dict(order + [("/ab", other)])
        assert server.route("/a/b/123") is inner and server.route("/a/b") is inner
        assert server.route("/a/c") is outer and server.route("/a") is outer and server.route("/ab") is other
        assert server.route("/abc") is None
    # /a/b not serving (failed, loading): its endpoint still wins over /a's, and answers 503, not /a's 404.
    server.routes = {"/a": outer}
    inner.guessed_endpoint = "/a/b"
    server.apis = {Path("/o"): outer, Path("/i"): inner}
    assert server.route("/a/b/123") is inner and server.route("/a/x") is outer


# -- item 11: smaller defects -------------------------------------------------------------------------------------------


def test_a_control_character_in_a_path_is_a_json_400_without_a_traceback(local, tmp_path):
    root = tmp_path / "apis"
    make_api(root, "echo")
    server = local(root)
    for path in ("/echo/a%0Ab", "/ec%01ho", "/echo%7F", "/x%00"):
        r = httpx.post(f"{server.base}{path}", json={}, headers={"x-request-id": f"ctl{path}"})
        assert r.status_code == 400, (path, r.text)
        assert r.json()["error"]["type"] == "bad_request" and r.json()["error"]["request_id"] == f"ctl{path}"
        assert [e["status"] for e in wait_for(lambda: lines_of(server, f"ctl{path}"), 10, "logged")] == [400]
    assert "Traceback" not in server.stderr() and "Traceback" not in server.stdout()


def test_a_failed_cold_start_keeps_the_load_error_out_of_the_answer(local, tmp_path):
    root = tmp_path / "apis"
    make_api(root, "sleepy", "autoscaling:\n  min_replicas: 0\n",
             init='raise RuntimeError("cannot reach postgres://admin:hunter2@db/models")')
    server = local(root)
    r = httpx.post(f"{server.base}/sleepy", json={}, timeout=60)
    assert r.status_code == 503 and r.json()["error"]["type"] == "not_ready"
    assert "hunter2" not in r.text and "failed to load during its cold start" in r.json()["error"]["message"]
    assert r.headers["retry-after"]
    assert "hunter2" in info(server, "sleepy")["error"]  # the developer sees it: console and /info
    assert any("hunter2" in (e.get("error") or "") for e in server.log_lines() if e.get("message") == "failed")


def test_the_client_headers_pass_as_sent_with_one_date_and_trailing_whitespace_accepted(local, tmp_path):
    root = tmp_path / "apis"
    make_api(root, "echo")
    server = local(root)
    body = b"{}"
    head = (b"POST /echo HTTP/1.1\r\nHost: api.example.test:8443\r\nContent-Type: application/json\r\n"
            b"X-Trace: abc  \r\nX-Myelin-Arrival: 1\r\nConnection: close\r\nContent-Length: 2\r\n\r\n")
    status, headers, answer = split(raw_request(server.port, head, body))
    assert status == 200, answer
    seen = json.loads(answer)["headers"]
    assert seen["host"] == "api.example.test:8443"  # the client's Host, as the ALB keeps it
    assert seen["x-trace"] == "abc"  # accepted, as myelin serve accepts it
    for added in ("accept-encoding", "connection", "user-agent", "accept", "x-myelin-arrival"):
        assert added not in seen, (added, seen)
    assert seen["x-request-id"] == dict(headers)["x-request-id"]  # added: the client sent none
    assert [k for k, _ in headers].count("date") == 1
    # The client's own request id is passed as it is, once.
    status, headers, answer = split(raw_request(
        server.port, head.replace(b"X-Trace", b"X-Request-ID: mine-1\r\nX-Trace"), body))
    assert json.loads(answer)["headers"]["x-request-id"] == "mine-1"
    assert [k for k, _ in headers].count("x-request-id") == 1 and dict(headers)["x-request-id"] == "mine-1"
    # A response the router makes itself carries one date too.
    _, headers, _ = split(raw_request(server.port, b"GET /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"))
    assert [k for k, _ in headers].count("date") == 1
    # myelin serve accepts the same trailing whitespace (the router must too). The router passes the value
    # without it (RFC 9110 5.5: whitespace around a field value is not part of it; its HTTP client refuses it).
    serve = ServerProcess(["serve", str(root / "echo")], tmp_path)
    try:
        serve.wait_ready()
        status, _, answer = split(raw_request(serve.port, head, body))
        assert status == 200 and json.loads(answer)["headers"]["x-trace"].strip() == "abc"
    finally:
        serve.stop()


def test_every_response_the_router_makes_leaves_one_request_log_line(local, tmp_path):
    root = tmp_path / "apis"
    make_api(root, "echo", "serving:\n  max_body_size: 1Mi\n")
    make_api(root, "kaput", init='raise ValueError("bad weights")')
    server = local(root)
    cases = {
        "r-404": ("GET", "/nope", {}, 404),
        "r-405": ("POST", "/healthz", {}, 405),
        "r-413": ("POST", "/echo", {"content-length": str(2 * 2**20)}, 413),
        "r-503": ("POST", "/kaput", {}, 503),
    }
    for rid, (method, path, headers, status) in cases.items():
        head = f"{method} {path} HTTP/1.1\r\nHost: t\r\nX-Request-ID: {rid}\r\nConnection: close\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        got, _, body = split(raw_request(server.port, head.encode()))
        assert got == status and json.loads(body)["error"]["request_id"] == rid, body
    for rid, (method, path, _, status) in cases.items():
        logged = wait_for(lambda: lines_of(server, rid), 10, f"{rid} logged")
        time.sleep(0.1)
        logged = lines_of(server, rid)
        assert [(e["method"], e["path"], e["status"]) for e in logged] == [(method, path, status)], logged
        assert logged[0]["latency_ms"] >= 0 and logged[0]["error"]


def test_request_bodies_are_streamed_to_the_api_not_buffered_by_the_router(local, tmp_path):
    """24 clients each send 9 MiB of a 9 MiB + 1 B body and stall: the router holds none of it (the old router
    held every byte, 216 MiB, until the body timeout)."""
    root = tmp_path / "apis"
    make_api(root, "echo", "serving:\n  max_body_size: 10Mi\n  max_concurrency: 2\n  max_queue_length: 64\n")
    server = local(root)
    router = server.proc.pid
    before = rss_kb(router)
    size = 9 * 2**20
    head = (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n\r\n" % (size + 1))
    socks = []
    try:
        for _ in range(24):
            socks.append(raw_request(server.port, head, b"\0" * size, read=False))
        time.sleep(1.0)
        grown = (rss_kb(router) - before) // 1024
    finally:
        for sock in socks:
            sock.close()
    print(f"\n24 clients x 9 MiB of body in flight: router RSS +{grown} MiB")
    assert grown < 48, f"the router's RSS grew by {grown} MiB"
