"""One JSON line per request, written after the response, in batches.

Lines are appended to a buffer on the hot path and flushed once per event
loop iteration, so a burst of requests costs one write, and a response is
never held back by logging. Nothing is dropped: the buffer is flushed at
shutdown too.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from datetime import datetime, timezone
from typing import IO, Any

import orjson


_second_cache: tuple[int, str] = (-1, "")


def _iso(ts: float) -> str:
    """UTC ISO-8601 with milliseconds; the date-time part is formatted once per second."""
    global _second_cache
    frac, whole_f = math.modf(ts)  # as datetime does: whole seconds, microseconds rounded, then ms truncated
    whole, micros = int(whole_f), round(frac * 1e6)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    if _second_cache[0] != whole:
        _second_cache = (whole, datetime.fromtimestamp(whole, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_second_cache[1]}.{micros // 1000:03d}Z"


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

    def job(self, level: str, api: str, job_id: str, attempt: int, status: str, duration_s: float,
            error: str | None = None) -> None:
        """One line per job attempt of an AsyncAPI (how it ended), batched like request lines."""
        entry = {
            "time": time.time(), "level": level, "api": api, "job_id": job_id,
            "attempt": attempt, "job_status": status, "duration_ms": round(duration_s * 1000, 3),
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
