"""Attacks on the HTTP protocol layer (protection.py): requests the parser refuses.

Before: uvicorn answered a malformed request (duplicate Content-Length, Content-Length with Transfer-Encoding, a
bad chunk) with a plain-text 400 without a request id, written at once: a malformed request pipelined behind a
slow one replaced the slow one's answer (the client read a 400 for its first request, and its 200 was lost).
Now: the contract's JSON 400 with a request id, after the earlier answer, then the connection closes. Real
`myelin serve` and `myelin local` servers on 127.0.0.1, stopped by pid."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

SLOW = Path(__file__).resolve().parent.parent / "reliability" / "apis" / "slow"

FIRST = b'POST /slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n{"sleep": 1.0}'
MALFORMED = {
    "duplicate content-length": b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "content-length and chunked": b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                                  b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "bad chunk size": b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\nZZ\r\n",
}


def _responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    out = []
    while data:
        head, rest = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
        size = int(headers["content-length"])
        out.append((int(lines[0].split()[1]), headers, rest[:size]))
        data = rest[size:]
    return out


def _exchange(port: int, *parts: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        for part in parts:
            sock.sendall(part)
            time.sleep(0.1)
        data = b""
        while chunk := sock.recv(65536):  # the server closes the connection after the 400
            data += chunk
    return _responses(data)


def _is_json_400(response: tuple[int, dict[str, str], bytes]) -> None:
    status, headers, body = response
    assert status == 400, response
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["type"] == "bad_request" and error["request_id"] == headers["x-request-id"]


@pytest.mark.parametrize("how", ["serve", "local"])
def test_a_malformed_request_gets_a_json_400_after_the_earlier_pipelined_answer(how, start_server):
    server = start_server(how, str(SLOW))
    for name, malformed in MALFORMED.items():
        alone = _exchange(server.port, malformed)
        assert len(alone) == 1, (name, alone)
        _is_json_400(alone[0])
        # Pipelined behind a one-second predict: its 200 first, then the 400, then the connection closes.
        answers = _exchange(server.port, FIRST, malformed)
        assert [a[0] for a in answers] == [200, 400], (name, answers)
        assert b'"pid"' in answers[0][2]
        _is_json_400(answers[1])
    print(f"{how}: {len(MALFORMED)} malformed requests, alone and pipelined: JSON 400 each, earlier answers kept")
