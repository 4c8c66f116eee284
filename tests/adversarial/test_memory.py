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

from .helpers import APIS, metric

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
