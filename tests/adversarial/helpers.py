"""Helpers of the adversarial suite; servers, RSS readings and raw sockets come from tests/reliability/helpers.py."""

from __future__ import annotations

import re
from pathlib import Path

APIS = Path(__file__).resolve().parent / "apis"


def metric(text: str, name: str, api: str) -> float:
    """One API's sample of `name` in a /metrics exposition."""
    match = re.search(rf'^{name}{{api="{api}"}} (\S+)$', text, re.M)
    assert match, f"{name} for {api} not in /metrics"
    return float(match.group(1))


def sockets_open(pid: int) -> int:
    """The process's open sockets (listening one included)."""
    import os

    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:  # closed meanwhile
            pass
    return count


def non_reader(port: int, request: bytes):
    """A client that sends `request` and never reads (a small receive window, so little sits in its kernel)."""
    import socket

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window stays small
    sock.connect(("127.0.0.1", port))
    sock.sendall(request)
    return sock


def wait_until(predicate, limit: float) -> bool:
    import time

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()
