"""Hostile clients and information leaks (issue 9, items 6-11): real servers on 127.0.0.1, raw sockets where
the attack lives below HTTP clients."""

from __future__ import annotations

import json
import time

import httpx

from .helpers import APIS, RssSampler, Tally, raw_connect, read_until_closed, rss_kb


def _status(raw: bytes) -> int | None:
    return int(raw[9:12]) if raw.startswith(b"HTTP/1.1 ") else None


def _responses(raw: bytes) -> list[tuple[int, dict]]:
    """Split a raw byte stream of HTTP/1.1 responses with content-length bodies into (status, json body)."""
    out = []
    while raw.startswith(b"HTTP/1.1 "):
        head, _, rest = raw.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
        out.append((int(head[9:12]), json.loads(rest[:length])))
        raw = rest[length:]
    return out


def test_only_a_short_list_of_charsets_is_decoded(start_server):
    server = start_server("serve", str(APIS / "guarded"))
    url = f"{server.base}/guarded"
    cases = {
        "utf-8": ("héllo".encode("utf-8"), 200),
        "UTF-8": ("héllo".encode("utf-8"), 200),
        "us-ascii": (b"hello", 200),
        "latin-1": ("héllo".encode("latin-1"), 200),
        "iso-8859-1": ("héllo".encode("latin-1"), 200),
        "utf-16": ("héllo".encode("utf-16"), 200),
        "utf-32-le": ("héllo".encode("utf-32-le"), 200),
        "punycode": (b"a" * 300_000, 415),
        "unicode_escape": (b"\\ud800", 415),
        "rot13": (b"uryyb", 415),
        "idna": (b"hello", 415),
        "no-such-codec": (b"hello", 415),
    }
    tally = Tally()
    wrong = {}
    with httpx.Client(timeout=10) as http:
        for charset, (body, expected) in cases.items():
            r = http.post(url, content=body, headers={"content-type": f"text/plain; charset={charset}"})
            tally.add(r.status_code)
            if r.status_code != expected or r.headers["content-type"] != "application/json":
                wrong[charset] = (r.status_code, r.text[:200])
            elif expected == 415:
                assert r.json()["error"]["type"] == "unsupported_media_type" and "charset" in r.json()["error"]["message"]
    print(tally.summary("charsets"))
    assert not wrong, wrong


def test_oversized_headers_get_431_and_memory_stays_flat(start_server):
    server = start_server("serve", str(APIS / "guarded"), env={"MYELIN_MAX_HEADER_BYTES": "65536"})
    # One header just under the limit is fine, one over it is refused.
    ok = httpx.post(f"{server.base}/guarded", json={}, headers={"x-big": "a" * 60_000}, timeout=5)
    big = httpx.post(f"{server.base}/guarded", json={}, headers={"x-big": "a" * 70_000}, timeout=5)
    assert ok.status_code == 200
    assert big.status_code == 431 and big.json()["error"]["type"] == "headers_too_large"
    assert big.headers.get("connection") == "close"
    # An endless header line: the server answers 431 and closes long before 50 MB arrive; RSS stays flat.
    before = rss_kb(server.proc.pid)
    sampler = RssSampler(server.proc.pid)
    sampler.start()
    sock = raw_connect(server.port)
    sock.sendall(b"POST /guarded HTTP/1.1\r\nHost: x\r\nX-Endless: ")
    sent, refused = 0, False
    chunk = b"a" * 65536
    try:
        while sent < 50_000_000:
            sock.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        refused = True
    raw, _, closed = read_until_closed(sock, 5)
    sock.close()
    health = httpx.get(f"{server.base}/healthz", timeout=5).status_code
    peak = sampler.stop()
    print(f"\nendless header: sent {sent / 1e6:.1f} MB before the server closed (refused={refused}), "
          f"answer={_status(raw)}, RSS {before // 1024} -> peak {peak // 1024} MiB, healthz={health}")
    assert sent < 10_000_000 and (refused or closed)
    assert _status(raw) in (431, None)  # the 431 may be lost with the reset, never another answer
    assert peak - before < 20_000 and health == 200


def test_request_ids_are_capped_and_present_on_every_response(start_server):
    server = start_server("serve", str(APIS / "guarded"))
    huge = "x" * 60_000  # under MYELIN_MAX_HEADER_BYTES (64 KiB), far over the 128 kept
    with httpx.Client(timeout=5) as http:
        for method, path in (("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/info"),
                             ("GET", "/openapi.json"), ("GET", "/nope"), ("POST", "/guarded"), ("DELETE", "/guarded")):
            plain = http.request(method, f"{server.base}{path}", json={} if method == "POST" else None)
            assert plain.headers.get("x-request-id"), (method, path)
            echoed = http.request(method, f"{server.base}{path}", headers={"x-request-id": huge},
                                  json={} if method == "POST" else None)
            rid = echoed.headers.get("x-request-id", "")
            assert rid == "x" * 128, (method, path, len(rid))
            assert huge not in echoed.text, (method, path, "the id must not be echoed in full in the body")


def test_a_timeout_on_a_pipelined_request_never_replaces_the_earlier_answer(start_server):
    """Request 1 (takes 1.5 s) then, on the same connection, a stalled request 2: the first answer on the wire is
    request 1's 200, then 408 for request 2, then the connection closes."""
    server = start_server("serve", str(APIS / "slow"), env={"MYELIN_HEADER_TIMEOUT": "0.5"})
    body = b'{"sleep": 1.5}'
    first = (b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
             + str(len(body)).encode() + b"\r\n\r\n" + body)
    second = b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Ty"
    sock = raw_connect(server.port)
    sock.sendall(first + second)
    raw, took, closed = read_until_closed(sock, 6)
    sock.close()
    answers = _responses(raw)
    print(f"\npipelined: answers={[s for s, _ in answers]} in {took:.2f}s, closed={closed}")
    assert [s for s, _ in answers] == [200, 408] and "pid" in answers[0][1] and closed


def test_trailing_slashes_are_404_never_redirects(start_server):
    server = start_server("serve", str(APIS / "guarded"))
    with httpx.Client(timeout=5, follow_redirects=False) as http:
        for method, path in (("POST", "/guarded/"), ("GET", "/healthz/"), ("GET", "/metrics/"), ("POST", "/guarded//")):
            r = http.request(method, f"{server.base}{path}", headers={"host": "evil.example"},
                             json={} if method == "POST" else None)
            assert r.status_code == 404 and "location" not in r.headers, (method, path, r.status_code, r.headers)
            assert r.json()["error"]["type"] == "not_found"


def test_load_errors_and_config_values_do_not_reach_clients(start_server, tmp_path):
    """An API whose __init__ failed (with a password in the exception) behind API keys, under `myelin local`
    (which keeps serving the others): authentication comes first, and the failure reaches clients as a generic
    503 with a request id; the detail is in the server log. `/info` never shows env or config values."""
    import shutil

    apis = tmp_path / "apis"
    for name in ("leaky-load", "guarded"):
        shutil.copytree(APIS / name, apis / name)
    local = start_server("local", str(apis), "--no-reload", env={"LEAKY_KEYS": "k-1"})
    faulty = start_server("serve", str(APIS / "faulty"))
    with httpx.Client(timeout=5) as http:
        no_key = http.post(f"{local.base}/leaky-load", json={})
        wrong_key = http.post(f"{local.base}/leaky-load", json={}, headers={"x-api-key": "nope"})
        with_key = http.post(f"{local.base}/leaky-load", json={}, headers={"x-api-key": "k-1"})
        info = http.get(f"{faulty.base}/info").json()
    for r in (no_key, wrong_key, with_key):
        assert "s3cr3t" not in r.text, r.text
    assert no_key.status_code == 401 and wrong_key.status_code == 401
    assert with_key.status_code == 503 and with_key.json()["error"]["type"] == "not_ready"
    assert with_key.json()["error"]["request_id"] in with_key.json()["error"]["message"]
    (api,) = info["apis"]
    text = json.dumps(info)
    assert "hunter2" not in text and "tok-3f9a1c" not in text
    assert api["spec"]["predictor"]["env"] == {"FAULTY_SECRET_TOKEN": "<redacted>"}
    assert api["spec"]["predictor"]["config"] == {"database_url": "<redacted>"}
    local.stop()
    assert "s3cr3t-pw" in local.stdout() + local.stderr(), "the detail is in the server log"
