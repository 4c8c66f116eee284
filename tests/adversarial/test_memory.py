"""Memory stays bounded whatever clients do (issue 18, items 3 and 4).

Each scenario runs a real `myelin serve` on 127.0.0.1, reads the server process's RSS
(/proc/<pid>/status VmRSS) before, during and after a crowd of hostile clients, and asserts a bound
on its growth (with a generous margin for allocator noise), never a time.
"""

from __future__ import annotations

import select
import socket
import threading
import time

import httpx

from reliability.helpers import RssSampler, raw_connect, rss_kb

from .helpers import APIS, metric, non_reader, sockets_open, wait_until

MIB = 2**20


def _warm(url: str) -> None:
    for _ in range(5):
        assert httpx.post(url, content=b"x" * 1000, headers={"content-type": "application/octet-stream"},
                          timeout=10).status_code == 200


class SlowUploader(threading.Thread):
    """Sends the headers of a `declared`-byte body, then all of it but the last byte in 256 KiB pieces, watching
    for an answer between pieces; then holds the connection open until told to stop."""

    PIECE = 256 * 1024

    def __init__(self, port: int, path: str, declared: int, done: threading.Barrier, release: threading.Event):
        super().__init__(daemon=True)
        self.port, self.path, self.declared = port, path, declared
        self.done, self.release = done, release
        self.sent = 0
        self.answer = b""

    def run(self) -> None:
        sock = raw_connect(self.port, timeout=30)
        try:
            sock.sendall(f"POST {self.path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/octet-stream\r\n"
                         f"content-length: {self.declared}\r\n\r\n".encode())
            piece = b"x" * self.PIECE
            while self.sent < self.declared - 1:
                if select.select([sock], [], [], 0)[0]:  # answered before the body is in: stop sending
                    break
                n = min(self.PIECE, self.declared - 1 - self.sent)
                try:
                    sock.sendall(piece[:n])
                except OSError:  # the server closed the connection after refusing it
                    break
                self.sent += n
            self.answer = self._read(sock)
        finally:
            try:
                self.done.wait(60)
            except threading.BrokenBarrierError:
                pass
            self.release.wait(60)
            sock.close()

    @staticmethod
    def _read(sock: socket.socket) -> bytes:
        sock.settimeout(0.5)  # an admitted upload gets no answer: its body never completes
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (socket.timeout, ConnectionResetError):
            pass
        return data


def test_slow_uploads_are_refused_before_their_bodies_are_read(start_server):
    """60 clients each send 9 MiB of a 9 MiB + 1 B body to a replica with 2 slots and a queue of 8: the 10
    admitted ones are read (each holds its body), the other 50 are refused with 503 on their headers, before
    their bodies are sent; RSS grows by at most the admitted bodies (10 × 9 MiB) plus a margin."""
    clients, capacity, body = 60, 10, 9 * MIB
    server = start_server("serve", str(APIS / "upload"))
    _warm(f"{server.base}/upload")
    time.sleep(0.3)
    idle_kb = rss_kb(server.proc.pid)
    sampler = RssSampler(server.proc.pid)
    sampler.start()
    done = threading.Barrier(clients + 1)
    release = threading.Event()
    uploaders = [SlowUploader(server.port, "/upload", body + 1, done, release) for _ in range(clients)]
    try:
        for u in uploaders:
            u.start()
        done.wait(120)  # every client has sent what it will, or was answered
        time.sleep(0.5)
        held_kb = rss_kb(server.proc.pid)
        in_flight = metric(httpx.get(f"{server.base}/metrics", timeout=5).text, "myelin_in_flight_requests", "upload")
    finally:
        release.set()
        for u in uploaders:
            u.join(30)
    peak_kb = sampler.stop()
    refused = [u for u in uploaders if u.answer.startswith(b"HTTP/1.1 503 ")]
    early = [u for u in refused if u.sent < body]
    growth_mib = (peak_kb - idle_kb) / 1024
    print(f"\nslow uploads: {clients} clients × {body // MIB} MiB, refused={len(refused)} (before their body was sent: "
          f"{len(early)}), in flight={in_flight}, rss idle={idle_kb // 1024} MiB held={held_kb // 1024} MiB "
          f"peak={peak_kb // 1024} MiB (+{growth_mib:.0f} MiB)")
    assert len(refused) == clients - capacity, [u.answer[:40] for u in uploaders]
    assert len(early) == len(refused)
    assert all(b"retry-after: 1" in u.answer.lower() and b"connection: close" in u.answer.lower() for u in refused)
    assert in_flight == capacity
    # Bound: the admitted bodies (capacity × 9 MiB = 90 MiB) plus 64 MiB for the allocator and buffers.
    assert growth_mib < capacity * body / MIB + 64, growth_mib


# ------------------------------------------------------------------------------------------ non-reading clients
WRITE_TIMEOUT_S = 1.0  # MYELIN_WRITE_TIMEOUT in these tests (the default is 30 s)


def _waves(server, request: bytes, clients: int, waves: int) -> tuple[int, list[int], int, list]:
    """`waves` × `clients` connections that send `request` and never read: wait, after each wave, until the
    server has aborted them all. (idle RSS, RSS after each wave, peak RSS, the sockets to close)."""
    pid = server.proc.pid
    time.sleep(0.5)  # earlier connections (the warm-up's) closed
    idle_sockets = sockets_open(pid)
    baseline = rss_kb(pid)
    sampler = RssSampler(pid)
    sampler.start()
    after, held = [], []
    try:
        for wave in range(waves):
            held.extend(non_reader(server.port, request) for _ in range(clients))  # never read, never closed
            # Accepted by the server first (a connection can wait in the listen backlog), then aborted by it.
            assert wait_until(lambda: sockets_open(pid) >= idle_sockets + clients, 10 * WRITE_TIMEOUT_S), (
                f"wave {wave}: the server did not accept {clients} connections")
            assert wait_until(lambda: sockets_open(pid) <= idle_sockets, 10 * WRITE_TIMEOUT_S + 20), (
                f"wave {wave}: {sockets_open(pid) - idle_sockets} connections of non-reading clients still open")
            time.sleep(0.2)
            after.append(rss_kb(pid))
    finally:
        peak = sampler.stop()
    return baseline, after, peak, held


def test_streams_to_clients_that_stop_reading_end_and_free_their_memory(start_server):
    """A stream of 1 MB items to a client that stops reading: its step stalls (499 `client_stalled`, or the
    write deadline aborts the connection first, 499 `client_disconnected`); either way the connection is aborted,
    the ticket released and the memory comes back. Bound: per non-reading client about one item plus the
    connection's 64 KiB high-water mark, for at most MYELIN_WRITE_TIMEOUT (+ serving.timeout when the stream
    stalls first); 3 waves pin no more than one."""
    clients, waves = 16, 3
    server = start_server("serve", str(APIS / "big-stream"), env={"MYELIN_WRITE_TIMEOUT": str(WRITE_TIMEOUT_S)})
    url = f"{server.base}/big-stream"
    with httpx.stream("POST", url, json={"items": 3}, timeout=10) as r:  # warm: one whole stream
        assert sum(1 for line in r.iter_lines() if line) == 3
    request = (b"POST /big-stream HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\n"
               b"\r\n{}")
    baseline, after, peak, held = _waves(server, request, clients, waves)
    time.sleep(1.0)
    in_flight = metric(httpx.get(f"{server.base}/metrics", timeout=5).text, "myelin_in_flight_requests", "big-stream")
    for sock in held:
        sock.close()
    server.stop()
    ends = [line.get("error") for line in server.log_lines() if line.get("status") == 499]
    print(f"\nstreams to non-reading clients: {waves} waves × {clients}, rss {baseline // 1024} MiB -> after each wave "
          f"{[a // 1024 for a in after]} MiB, peak {peak // 1024} MiB, in flight after={in_flight}, 499s: "
          f"{ {e: ends.count(e) for e in set(ends)} }")
    assert in_flight == 0
    assert len(ends) == clients * waves and set(ends) <= {"client_stalled", "client_disconnected"}
    assert (peak - baseline) / 1024 < clients * 2 + 64, (baseline, peak)  # one wave's items, about 2 MB each
    assert max(after) - baseline < 64 * 1024, (baseline, after)  # and it comes back


def test_a_big_answer_holds_its_ticket_until_written_or_aborted(start_server):
    """A non-streamed 8 MiB answer to clients that do not read: each request stays in flight (the ticket is held
    until its last byte is taken) until the write deadline aborts its connection; then in flight is 0 and RSS
    comes back."""
    clients, write_timeout = 8, 3.0
    server = start_server("serve", str(APIS / "big-answer"), env={"MYELIN_WRITE_TIMEOUT": str(write_timeout)})
    assert httpx.post(f"{server.base}/big-answer", json={}, timeout=10).status_code == 200
    pid = server.proc.pid
    time.sleep(0.5)  # the warm-up's connection closed
    idle_sockets, baseline = sockets_open(pid), rss_kb(pid)
    request = (b"POST /big-answer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\n"
               b"\r\n{}")
    held = [non_reader(server.port, request) for _ in range(clients)]

    def in_flight() -> float:
        return metric(httpx.get(f"{server.base}/metrics", timeout=5).text, "myelin_in_flight_requests", "big-answer")

    try:
        seen = wait_until(lambda: in_flight() == clients, write_timeout)
        held_kb = rss_kb(pid)
        aborted = wait_until(lambda: sockets_open(pid) <= idle_sockets, 10 * write_timeout + 20)
        time.sleep(0.3)
        after = (in_flight(), rss_kb(pid))
    finally:
        for sock in held:
            sock.close()
    print(f"\n8 MiB answers to {clients} non-reading clients: in flight while unsent={clients if seen else 'no'}, "
          f"rss {baseline // 1024} -> {held_kb // 1024} MiB held -> {after[1] // 1024} MiB after the abort, "
          f"in flight after={after[0]}")
    assert seen and aborted
    assert after[0] == 0
    assert after[1] - baseline < 64 * 1024, (baseline, after)


def test_async_result_reads_by_clients_that_stop_reading_free_their_memory(start_server, tmp_path):
    """30 GETs of one 16 MB AsyncAPI result that are never read: each pins its status document until the write
    deadline aborts it; then the memory comes back (before: +506 MiB, held for as long as the clients wait)."""
    clients, waves = 15, 2
    server = start_server("serve", str(APIS / "big-result"), env={
        "MYELIN_WRITE_TIMEOUT": str(WRITE_TIMEOUT_S), "MYELIN_STATE_DIR": str(tmp_path / "state")})
    job = httpx.post(f"{server.base}/big-result", json={}, timeout=10).json()["id"]
    assert wait_until(lambda: httpx.get(f"{server.base}/big-result/{job}", timeout=10).json()["status"] == "completed",
                      30)
    request = f"GET /big-result/{job} HTTP/1.1\r\nhost: x\r\n\r\n".encode()
    baseline, after, peak, held = _waves(server, request, clients, waves)
    for sock in held:
        sock.close()
    print(f"\n16 MB result to non-reading clients: {waves} waves × {clients}, rss {baseline // 1024} MiB -> after "
          f"each wave {[a // 1024 for a in after]} MiB, peak {peak // 1024} MiB")
    assert max(after) - baseline < 64 * 1024, (baseline, after)
    assert httpx.get(f"{server.base}/big-result/{job}", timeout=10).status_code == 200
