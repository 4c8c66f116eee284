"""Helpers for the reliability tests: outcome tallies, RSS readings, raw sockets.

Every test here runs real `myelin` servers on 127.0.0.1 (the `start_server`
fixture of tests/conftest.py), bounds its request count and time, counts what
happened to each request and prints a one-line summary (`pytest -s` shows it).
"""

from __future__ import annotations

import collections
import socket
import threading
import time
from pathlib import Path

import httpx

APIS = Path(__file__).resolve().parent / "apis"
RUNTIME_APIS = Path(__file__).resolve().parent.parent / "runtime" / "apis"


def outcome_of(call) -> tuple[object, httpx.Response | None]:
    """Run one request; its outcome is the status code, or the name of the transport error."""
    try:
        response = call()
    except httpx.TimeoutException:
        return "timeout", None
    except httpx.ConnectError:
        return "refused", None
    except httpx.HTTPError as err:
        return type(err).__name__, None
    return response.status_code, response


class Tally:
    """Thread-safe counts of outcomes: sent, answered (an HTTP status came back), by status or error."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: collections.Counter = collections.Counter()
        self.sent = 0

    def add(self, outcome: object) -> None:
        with self.lock:
            self.sent += 1
            self.counts[outcome] += 1

    @property
    def answered(self) -> int:
        return sum(n for k, n in self.counts.items() if isinstance(k, int))

    def summary(self, name: str) -> str:
        parts = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items(), key=lambda kv: str(kv[0])))
        return f"{name}: sent={self.sent}, answered={self.answered}, {parts}"


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


class RssSampler(threading.Thread):
    """Samples a process's RSS every `interval` seconds until stopped; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.02):
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.peak = max(self.peak, rss_kb(self.pid))
            except (OSError, AssertionError):
                return
            self._halt.wait(self.interval)

    def stop(self) -> int:
        self._halt.set()
        self.join(5)
        return self.peak


def raw_connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float, bool]:
    """Read until the server closes (or `limit` seconds pass): (bytes, seconds taken, closed by server)."""
    started = time.monotonic()
    data = b""
    sock.settimeout(0.2)
    while time.monotonic() - started < limit:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return data, time.monotonic() - started, True
        if not chunk:
            return data, time.monotonic() - started, True
        data += chunk
    return data, time.monotonic() - started, False
