"""Slow and hostile clients: stalled headers or bodies time out, oversized bodies get 413 unread, bad JSON 400/413."""

from __future__ import annotations

import collections
import json
import socket
import time

import httpx

from .helpers import APIS, Tally, raw_connect, read_until_closed, rss_kb

TIMEOUT_S = 1.0          # MYELIN_HEADER_TIMEOUT and MYELIN_BODY_TIMEOUT for these servers
BOUND_S = TIMEOUT_S + 4  # a stalled connection must be closed well before this
ENV = {"MYELIN_HEADER_TIMEOUT": str(TIMEOUT_S), "MYELIN_BODY_TIMEOUT": str(TIMEOUT_S)}
MAX_BODY = 1024 * 1024   # tests/reliability/apis/guarded serving.max_body_size: 1Mi
HEAD = b"POST /guarded HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


def _status(raw: bytes) -> int | None:
    if not raw.startswith(b"HTTP/1.1 "):
        return None
    return int(raw[9:12])


def _read_response(sock: socket.socket) -> bytes:
    """One whole HTTP/1.1 response (head, then content-length bytes of body): one recv() may return only the
    head, and the body would then be read as the next response."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = sock.recv(65536)
        if not chunk:
            return raw
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def _body(raw: bytes) -> dict:
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


def test_stalled_headers_and_bodies_are_cut_off(start_server):
    server = start_server("serve", str(APIS / "guarded"), env=ENV)
    stalls = {
        "idle connection": b"",
        "partial request line": b"POST /guar",
        "partial headers": HEAD + b"Content-Length: 2\r\n",
        "stalled body": HEAD + b"Content-Length: 100\r\n\r\n[1,2,3",
    }
    stalled_clients = 40  # plus a crowd of slow-header clients, as a slowloris attack would open
    sockets = []
    for name, data in stalls.items():
        sock = raw_connect(server.port)
        sock.sendall(data)
        sockets.append((name, sock))
    for i in range(stalled_clients):
        sock = raw_connect(server.port)
        sock.sendall(HEAD[: 10 + i])
        sockets.append(("crowd", sock))
    # while they stall, the server keeps serving
    during = httpx.post(f"{server.base}/guarded", json={"a": 1}, timeout=5).status_code

    tally = Tally()
    results = {}
    for name, sock in sockets:
        raw, took, closed = read_until_closed(sock, BOUND_S)
        sock.close()
        outcome = f"{_status(raw) or 'no-response'}+{'closed' if closed else 'OPEN'}"
        tally.add(outcome)
        results.setdefault(name, []).append((outcome, took, raw))
    slowest = max(took for rs in results.values() for _, took, _ in rs)
    print(tally.summary("slow clients") + f", normal request meanwhile={during}, slowest close={slowest:.2f}s")

    assert during == 200
    assert tally.counts["OPEN"] == 0 and all(o.endswith("+closed") for o in tally.counts), tally.counts
    assert results["idle connection"][0][0] == "no-response+closed"          # nothing sent: just closed
    for name in ("partial request line", "partial headers", "stalled body"):
        outcome, took, raw = results[name][0]
        assert outcome == "408+closed", (name, outcome, raw[:200])
        assert _body(raw)["error"]["type"] == "request_timeout"
        assert _body(raw)["error"]["request_id"] and b"x-request-id: " + _body(raw)["error"]["request_id"].encode() in raw
        assert took < BOUND_S
    assert {o for o, _, _ in results["crowd"]} == {"408+closed"}
    # and the server is whole afterwards
    assert httpx.post(f"{server.base}/guarded", json={}, timeout=5).status_code == 200
    # the stalled body reached the app: its log line and metrics say 408, not a client disconnect
    time.sleep(0.3)
    stalled = [l for l in server.log_lines() if l.get("path") == "/guarded" and l.get("status") not in (200,)]
    assert [(l["status"], l["error"]) for l in stalled] == [(408, "request_timeout")], stalled


def test_slow_but_legitimate_clients_are_served(start_server):
    server = start_server("serve", str(APIS / "guarded"), env=ENV)
    body = b'{"x": 1}'
    # headers in two parts, inside the header timeout
    sock = raw_connect(server.port)
    sock.sendall(HEAD)
    time.sleep(TIMEOUT_S / 3)
    sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body))
    time.sleep(TIMEOUT_S / 3)
    sock.sendall(body)
    first = _read_response(sock)
    # a keep-alive connection idle for longer than the header timeout is still good for the next request
    time.sleep(TIMEOUT_S * 1.5)
    sock.sendall(HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    second = _read_response(sock)
    sock.close()
    print(f"slow legit client: first={_status(first)}, second after {TIMEOUT_S * 1.5:g}s idle={_status(second)}")
    assert _status(first) == 200 and _status(second) == 200


def test_oversized_bodies_get_413_unread(start_server):
    server = start_server("serve", str(APIS / "guarded"))
    for _ in range(3):
        httpx.post(f"{server.base}/guarded", json={}, timeout=5)
    idle_kb = rss_kb(server.proc.pid)
    tally = Tally()
    took = []
    for _ in range(5):
        # claims 1 GB, sends 64 KiB: refused from the Content-Length alone
        sock = raw_connect(server.port)
        started = time.monotonic()
        sock.sendall(HEAD + b"Content-Length: 1000000000\r\n\r\n" + b"[" * 65536)
        raw, _, closed = read_until_closed(sock, 10)
        took.append(time.monotonic() - started)
        sock.close()
        tally.add(_status(raw))
        assert closed and _body(raw)["error"]["type"] == "payload_too_large"
    # chunked, no Content-Length: reading stops once the limit is passed
    sock = raw_connect(server.port)
    sock.sendall(b"POST /guarded HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"7" * 65536
    sent, raw = 0, b""
    sock.settimeout(0.05)
    for _ in range(4 * MAX_BODY // len(chunk)):
        sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        sent += len(chunk)
        try:
            raw = sock.recv(65536)
        except socket.timeout:
            continue
        break
    sock.close()
    tally.add(_status(raw))
    grown_kb = rss_kb(server.proc.pid) - idle_kb
    print(tally.summary("oversized bodies") + f", slowest 413={max(took) * 1000:.0f}ms, chunked refused after "
          f"{sent // 1024}KiB, rss growth={grown_kb}KiB")
    assert tally.counts[413] == 6, tally.counts
    assert MAX_BODY < sent < 2 * MAX_BODY  # refused soon after the limit, not after reading all of it
    assert max(took) < 5                   # answered at once, not after reading (or timing out on) the body
    assert grown_kb < 20 * 1024            # a 1 GB claim did not allocate anything like it


def test_nested_and_huge_json_are_rejected_cleanly(start_server):
    server = start_server("serve", str(APIS / "guarded"))
    cases = {
        "100k [": (b"[" * 100_000, 400),
        "100k nested, balanced": (b"[" * 100_000 + b"]" * 100_000, 400),
        "100k nested objects": (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, 400),
        "2 MiB array": (b"[" + b"1," * MAX_BODY + b"1]", 413),
        "truncated": (b'{"a": [1, 2', 400),
        "NaN literal": (b"[NaN]", 400),
        "invalid UTF-8": (b'["\xff\xfe"]', 400),
        "empty": (b"", 400),
        "lone surrogate": (b'["\\ud800"]', 400),
    }
    tally = Tally()
    wrong = {}
    with httpx.Client(timeout=10) as http:
        for name, (body, expected) in cases.items():
            r = http.post(f"{server.base}/guarded", content=body, headers={"content-type": "application/json"})
            tally.add(r.status_code)
            if r.status_code != expected or "error" not in r.json():
                wrong[name] = (r.status_code, r.text[:200])
        ok = http.post(f"{server.base}/guarded", json={"after": True}).status_code
    print(tally.summary("bad JSON") + f", then a normal request={ok}")
    assert tally.counts[500] == 0
    assert not wrong, wrong
    assert ok == 200
