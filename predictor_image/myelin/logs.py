"""One JSON line per request, written after the response, in batches, off the request's path.

A request costs one tuple appended to a buffer; the lines are formatted and written together a
little later (`FLUSH_INTERVAL_S`, or at once when `FLUSH_LINES` are waiting), so a burst of
requests costs a few writes, and a response is never held back by logging. Nothing is dropped:
the buffer is flushed by every non-request line (they keep their order), at shutdown, and at exit.

stdout carries these JSON lines and nothing else: `separate_stdout()` (called
when a server starts) points file descriptor 1 at stderr and keeps a private
descriptor for the log, so whatever a predictor or a library prints (Python's
print, C extensions writing to fd 1) goes to stderr as it is and can never
split or corrupt a log line. Each write is whole lines, at most PIPE_BUF
bytes, so lines from the processes of one replica never interleave either.
"""

from __future__ import annotations

import asyncio
import atexit
import math
import os
import select
import sys
import threading
import time
from datetime import datetime, timezone
from typing import IO, Any

import orjson

_log_fd: int | None = None
_write_lock = threading.Lock()


def separate_stdout() -> None:
    """From now on fd 1 (print, C libraries) goes to stderr; the JSON log keeps the original stdout. Idempotent."""
    global _log_fd
    if _log_fd is not None:
        return
    try:
        sys.stdout.flush()
        _log_fd = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no usable stdout/stderr (closed): log where we can
        _log_fd = None


def trace_crashes() -> None:
    """On a fatal signal (a segfault or abort in native code: an extension such as orjson or torch, a GPU driver),
    write every thread's Python stack to stderr before the process dies, so its log (`kubectl logs --previous`,
    `myelin local`'s console) names the line of the predictor that was running, not only an exit code. Idempotent."""
    import faulthandler

    if not faulthandler.is_enabled():
        faulthandler.enable(file=sys.stderr, all_threads=True)


def _write_lines(data: bytes, stream: IO[str] | None) -> None:
    if stream is not None:
        stream.write(data.decode())
        stream.flush()
        return
    fd = _log_fd if _log_fd is not None else 1
    limit = getattr(select, "PIPE_BUF", 4096)
    with _write_lock:
        while data:
            if len(data) <= limit:
                chunk, data = data, b""
            else:  # whole lines, each write at most PIPE_BUF bytes (atomic on a pipe)
                cut = data.rfind(b"\n", 0, limit) + 1 or data.find(b"\n") + 1 or len(data)
                chunk, data = data[:cut], data[cut:]
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]


def _clean(value: Any) -> Any:
    """Strings orjson refuses (lone surrogates) made printable; containers cleaned recursively."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_clean(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _line(entry: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(entry, default=str)
    except (orjson.JSONEncodeError, TypeError):  # e.g. a lone surrogate in an exception message
        try:
            return orjson.dumps(_clean(entry), default=lambda o: _clean(str(o)))
        except (orjson.JSONEncodeError, TypeError) as err:
            return orjson.dumps({"time": entry.get("time"), "level": "error", "message": "unloggable log entry",
                                 "error": _clean(repr(err))})


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


def _as_dict(entry: Any) -> dict[str, Any]:
    """A pending entry as the dict its line is written from (request lines are kept as tuples until then)."""
    if type(entry) is not tuple:
        entry["time"] = _iso(entry["time"])
        return entry
    ts, api, request_id, method, path, status, latency_s, error = entry
    d = {"time": _iso(ts), "level": "info" if status < 500 else "error", "api": api, "request_id": request_id,
         "method": method, "path": path, "status": status, "latency_ms": round(latency_s * 1000, 3)}
    if error:
        d["error"] = error
    return d


#: Longest a request's line waits in the buffer (seconds), and how many waiting lines trigger a write at once.
FLUSH_INTERVAL_S = 0.02
FLUSH_LINES = 64  # measured: larger batches format slower (bigger working set)


class RequestLog:
    def __init__(self, stream: IO[str] | None = None):
        self._stream = stream
        # Request lines as tuples (formatted at flush), other lines as dicts; in arrival order.
        self._pending: list[Any] = []
        self._timer: asyncio.TimerHandle | None = None
        self._soon = False  # a flush is scheduled for the next loop iteration (the buffer is full)
        self._pid = os.getpid()
        atexit.register(self._flush_at_exit)

    def request(self, api: str, request_id: str, method: str, path: str, status: int, latency_s: float,
                error: str | None = None) -> None:
        pending = self._pending
        pending.append((time.time(), api, request_id, method, path, status, latency_s, error))
        if self._timer is None or len(pending) >= FLUSH_LINES:
            self._schedule(len(pending))

    def job(self, level: str, api: str, job_id: str, attempt: int, status: str, duration_s: float,
            error: str | None = None) -> None:
        """One line per job attempt of an AsyncAPI (how it ended), batched like request lines."""
        entry = {
            "time": time.time(), "level": level, "api": api, "job_id": job_id,
            "attempt": attempt, "job_status": status, "duration_ms": round(duration_s * 1000, 3),
        }
        if error:
            entry["error"] = error
        self._pending.append(entry)
        self._schedule(len(self._pending))

    def event(self, level: str, message: str, **fields: Any) -> None:
        """Non-request log lines (load failures with tracebacks, drains, reloads): same format, written at once."""
        self._pending.append({"time": time.time(), "level": level, "message": message, **fields})
        self.flush()

    def _schedule(self, waiting: int) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a command, a test): write at once
            self.flush()
            return
        if waiting >= FLUSH_LINES:
            if not self._soon:
                self._soon = True
                loop.call_soon(self.flush)
        elif self._timer is None:
            self._timer = loop.call_later(FLUSH_INTERVAL_S, self.flush)

    def _flush_at_exit(self) -> None:
        if os.getpid() == self._pid:  # a forked child does not write its parent's lines again
            self.flush()

    def flush(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            try:
                timer.cancel()
            except RuntimeError:  # at exit, its loop may be closed already
                pass
        self._soon = False
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        data = b"\n".join([_line(_as_dict(entry)) for entry in pending]) + b"\n"
        try:
            _write_lines(data, self._stream)
        except (OSError, ValueError):
            pass  # stdout closed (e.g. the parent went away): serving matters more than logging
