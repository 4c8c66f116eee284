"""One JSON line per request, written after the response, in batches.

Lines are appended to a buffer on the hot path and flushed once per event
loop iteration, so a burst of requests costs one write, and a response is
never held back by logging. Nothing is dropped: the buffer is flushed at
shutdown too.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import datetime, timezone
from typing import IO, Any

import orjson


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RequestLog:
    def __init__(self, stream: IO[str] | None = None):
        self._stream = stream
        self._pending: list[dict[str, Any]] = []
        self._scheduled = False

    def request(self, api: str, request_id: str, method: str, path: str, status: int, latency_s: float,
                error: str | None = None) -> None:
        entry = {
            "time": time.time(), "level": "info" if status < 500 else "error", "api": api, "request_id": request_id,
            "method": method, "path": path, "status": status, "latency_ms": round(latency_s * 1000, 3),
        }
        if error:
            entry["error"] = error
        self._append(entry)

    def event(self, level: str, message: str, **fields: Any) -> None:
        """Non-request log lines (load failures with tracebacks, drains, reloads): same format, written at once."""
        self._pending.append({"time": time.time(), "level": level, "message": message, **fields})
        self.flush()

    def _append(self, entry: dict[str, Any]) -> None:
        self._pending.append(entry)
        if not self._scheduled:
            self._scheduled = True
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        out = []
        for entry in pending:
            entry["time"] = _iso(entry["time"])
            out.append(orjson.dumps(entry, default=str))
        stream = self._stream or sys.stdout
        try:
            stream.write(b"\n".join(out).decode() + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass  # stdout closed (e.g. the parent went away): serving matters more than logging
