"""Clients that never read their answer: the write deadline aborts their connections and frees what they pinned.

Without it, each non-reading client of an 8 MiB answer pins the unsent part of that answer in the server for as
long as it keeps the connection open (uvicorn's graceful close waits for a flush that never comes).
"""

from __future__ import annotations

import re
import socket
import time

import httpx

from tests.adversarial.helpers import APIS, non_reader, sockets_open, wait_until
from tests.reliability.helpers import rss_kb

WRITE_TIMEOUT_S = 1.0
CLIENTS = 24
ANSWER = 8 * 2**20
REQUEST = b"POST /big-answer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def _write_timeouts(base: str) -> float:
    text = httpx.get(base + "/metrics", timeout=5).text
    match = re.search(r'^myelin_write_timeouts_total\{api="big-answer"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_non_reading_clients_are_aborted_and_their_memory_reused(start_server):
    server = start_server("serve", str(APIS / "big-answer"), env={"MYELIN_WRITE_TIMEOUT": str(WRITE_TIMEOUT_S)})
    pid = server.proc.pid
    assert httpx.post(server.base + "/big-answer", json={}, timeout=10).content == b"x" * ANSWER
    idle_sockets = sockets_open(pid)
    baseline = rss_kb(pid)
    rss_after = []
    held = []
    for wave in range(3):
        clients = [non_reader(server.port, REQUEST) for _ in range(CLIENTS)]
        held.extend(clients)  # the clients never read and never close: only the server can end these connections
        # Every connection is aborted once its answer has made no progress for the write deadline.
        assert wait_until(lambda: sockets_open(pid) <= idle_sockets, 10 * WRITE_TIMEOUT_S + 10), (
            f"wave {wave}: {sockets_open(pid) - idle_sockets} non-reading connections still open")
        assert wait_until(lambda: _write_timeouts(server.base) >= CLIENTS * (wave + 1), 5)
        rss_after.append(rss_kb(pid))
    for sock in held:
        sock.close()
    grown_mib = (max(rss_after) - baseline) / 1024
    print(f"RSS baseline {baseline // 1024} MiB, after each wave of {CLIENTS} non-reading clients of 8 MiB: "
          f"{[r // 1024 for r in rss_after]} MiB")
    # Pinned, 3 waves would hold 3 x 24 x 8 MiB (576 MiB, less what the kernel buffers). Freed, the next wave
    # reuses the memory: growth stays within about one wave's worth whatever the number of waves.
    assert grown_mib < CLIENTS * ANSWER / 2**20 + 64, f"RSS grew {grown_mib:.0f} MiB"
    assert rss_after[-1] - rss_after[0] < 64 * 1024, f"RSS kept growing across waves: {rss_after}"
    # The server still serves.
    assert httpx.post(server.base + "/big-answer", json={}, timeout=10).status_code == 200


def test_a_slow_client_that_keeps_reading_is_never_cut(start_server):
    """The deadline is on progress, not on the whole answer: a client reading 64 KiB every 0.1 s takes ~5 s for a
    3 MiB answer at a 1 s write deadline (the kernel's queue drains for seconds before the socket is writable
    again), and the whole answer arrives."""
    server = start_server("serve", str(APIS / "big-answer"), env={"MYELIN_WRITE_TIMEOUT": str(WRITE_TIMEOUT_S)})
    size = 3 * 2**20
    body = b'{"size": %d}' % size
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"POST /big-answer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    got = b""
    started = time.monotonic()
    while b"\r\n\r\n" not in got or len(got.split(b"\r\n\r\n", 1)[1]) < size:
        chunk = sock.recv(64 * 1024)
        if not chunk:
            break
        got += chunk
        time.sleep(0.1)
    sock.close()
    assert got.startswith(b"HTTP/1.1 200 ")
    assert len(got.split(b"\r\n\r\n", 1)[1]) == size, "the slow reader's answer was cut"
    assert time.monotonic() - started > 2 * WRITE_TIMEOUT_S  # it really was slower than the deadline
    assert _write_timeouts(server.base) == 0
