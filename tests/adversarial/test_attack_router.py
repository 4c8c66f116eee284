"""Attacks on the `myelin local` router: more concurrent requests than a connection pool holds, and framing
headers a client may send.

Before: the router reached each API through an httpx pool of at most 100 connections and no pool deadline, so
the 101st concurrent request waited in the router (no bound, no timeout) whatever the API's own
max_concurrency; and a `Transfer-Encoding: gzip, chunked` body or a second `Host`, which `myelin serve`
accepts, were refused by the router's own HTTP client and answered 503 "API ... stopped answering (its process
ended...)", naming a process that was fine. Real `myelin local` servers on 127.0.0.1, stopped by pid."""

from __future__ import annotations

import concurrent.futures
import json
import socket
from pathlib import Path

import httpx

ECHO = """
import threading

ARRIVED = threading.Barrier({parties}, timeout=30)


class Predictor:
    def __init__(self, config):
        pass

    def predict(self, payload, headers):
        if isinstance(payload, dict) and payload.get("together"):
            ARRIVED.wait()  # returns only once `parties` predicts run at the same time
        return {{"payload": payload, "headers": dict(headers)}}
"""

CONCURRENT = 110  # more than httpx's default pool (100)


def _api(root: Path, name: str, yaml: str, parties: int = 1) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "api.yaml").write_text(f"name: {name}\n{yaml}")
    (folder / "predictor.py").write_text(ECHO.format(parties=parties))
    return root


def _raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def test_the_router_passes_as_many_concurrent_requests_as_the_api_admits(tmp_path, start_server):
    """110 predicts that each return only once all 110 run together (a barrier): the API admits 128 at once,
    so all must reach it at once. Before: 100 went through, the other 10 waited in the router's pool, the
    barrier broke after 30 s: 110 x 500."""
    root = _api(tmp_path / "apis", "wide", f"serving:\n  max_concurrency: 128\n  max_queue_length: 16\n"
                                           f"  threads: 128\n  timeout: 60s\n", parties=CONCURRENT)
    server = start_server("local", str(root))

    def call(_: int) -> int:
        return httpx.post(f"{server.base}/wide", json={"together": True}, timeout=90).status_code

    with concurrent.futures.ThreadPoolExecutor(CONCURRENT) as pool:
        statuses = list(pool.map(call, range(CONCURRENT)))
    print(f"{CONCURRENT} concurrent predicts through the router: {statuses.count(200)} x 200")
    assert statuses == [200] * CONCURRENT


def test_framing_headers_myelin_serve_accepts_pass_through_the_router(tmp_path, start_server):
    root = _api(tmp_path / "apis", "echo", "serving:\n  timeout: 10s\n")
    server = start_server("local", str(root))
    # A transfer coding before `chunked`: the router takes the body off the client's framing and frames it again.
    status, headers, body = _raw(server.port, b"POST /echo HTTP/1.1\r\nHost: api.example\r\nContent-Type: text/plain\r\n"
                                              b"Transfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n"
                                              b"5\r\nhello\r\n0\r\n\r\n")
    assert status == 200, body
    seen = json.loads(body)
    assert seen["payload"] == "hello"
    assert seen["headers"]["host"] == "api.example"
    # Two Host headers: the API sees the first, as `myelin serve` reads it.
    status, headers, body = _raw(server.port, b"POST /echo HTTP/1.1\r\nHost: first.example\r\nHost: second.example\r\n"
                                              b"Content-Type: application/json\r\nContent-Length: 2\r\n"
                                              b"Connection: close\r\n\r\n{}")
    assert status == 200, body
    assert json.loads(body)["headers"]["host"] == "first.example"
    # Nothing said the API's process had ended.
    assert "stopped answering" not in server.stdout() + server.stderr()
    assert httpx.get(f"{server.base}/info", timeout=5).json()["apis"][0]["restarts"] == 0
