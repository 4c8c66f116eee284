"""What `myelin local` prints: readable lines on a terminal, JSON lines otherwise (containers, CI, pipes).

On a terminal: one status line per API (loading, ready with its URL and load time, failed with file, line and
error, then the traceback as a traceback), the request log as `api  METHOD /path  status  ms`, and each failure
once. Elsewhere every line is one JSON object on stdout (the children's request log passes through as it is)
and the status lines are JSON events too, so logs stay machine-readable; the cluster's format is unchanged.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import IO, Any

import orjson


class Console:
    def __init__(self, tty: bool | None = None, out: IO[str] | None = None, err: IO[str] | None = None):
        self.err = err or sys.stderr
        self.out = out or sys.stdout
        self.tty = self.err.isatty() if tty is None else tty
        self._said: dict[str, str] = {}  # api -> last failure said (each failure once)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ writing
    def _line(self, text: str) -> None:
        with self._lock:
            try:
                self.err.write(text + "\n")
                self.err.flush()
            except (OSError, ValueError):
                pass

    def _event(self, level: str, message: str, **fields: Any) -> None:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "level": level, "message": message,
                 **{k: v for k, v in fields.items() if v is not None}}
        with self._lock:
            try:
                self.out.write(orjson.dumps(entry, default=str).decode() + "\n")
                self.out.flush()
            except (OSError, ValueError):
                pass

    # ------------------------------------------------------------------ status
    def banner(self, count: int, root: str, base: str) -> None:
        if self.tty:
            self._line(f"myelin local: serving {count} API(s) from {root} at {base}  (page: {base}/, docs: {base}/docs)")
        else:
            self._event("info", "myelin local started", apis=count, root=root, url=base)

    def loading(self, api: str, generation: int) -> None:
        what = "loading" if generation == 1 else f"reloading (version {generation})"
        if self.tty:
            self._line(f"  … {api:<22} {what}...")
        else:
            self._event("info", what, api=api, version=generation)

    def ready(self, api: str, url: str, seconds: float | None, generation: int, cold_start: float | None = None,
              restarts: int | None = None) -> None:
        self._said.pop(api, None)
        took = f"  (loaded in {seconds:.2f}s)" if seconds is not None else ""
        again = f", version {generation}" if generation > 1 and cold_start is None else ""
        if cold_start is not None:
            took = f"  (cold start: ready {cold_start:.2f}s after its first request)"
        if restarts:
            again += f", restart {restarts}"
        if self.tty:
            self._line(f"  ✓ {api:<22} {url}{took}{again.replace(', ', '  ') if again else ''}")
        else:
            self._event("info", "serving", api=api, url=url, load_seconds=seconds, version=generation,
                        cold_start_seconds=round(cold_start, 3) if cold_start is not None else None,
                        restarts=restarts)

    def exited(self, api: str, how: str, restarts: int, backoff: float, scaled_to_zero: bool = False) -> None:
        """The serving process ended on its own (killed, crashed, os._exit): said the moment it happens."""
        self._said.pop(api, None)
        if scaled_to_zero:
            then = "scaled to zero: its next request starts it" + (f" (after {backoff:g}s)" if backoff else "")
        else:
            then = f"restarting in {backoff:g}s" if backoff else "restarting now"
        if self.tty:
            self._line(f"  ✗ {api:<22} its process {how}; {then} (restarts so far: {restarts})")
        else:
            self._event("error", "exited", api=api, how=how, restarts=restarts, backoff_seconds=backoff,
                        scaled_to_zero=scaled_to_zero or None)

    def restarting(self, api: str, restart: int) -> None:
        if self.tty:
            self._line(f"  … {api:<22} restarting (restart {restart})...")
        else:
            self._event("info", "restarting", api=api, restart=restart)

    def request(self, api: str | None, request_id: str, method: str, path: str, status: int, latency_s: float,
                error: str | None = None) -> None:
        """A response the router made itself (404, 405, 401, 413, 503...): one line, as the API servers' log."""
        from ..logs import _iso

        entry: dict[str, Any] = {"time": _iso(time.time()), "level": "info" if status < 500 else "error",
                                 "api": api, "request_id": request_id, "method": method, "path": path,
                                 "status": status, "latency_ms": round(latency_s * 1000, 3)}
        if error:
            entry["error"] = error
        self.child_log(api or "-", orjson.dumps(entry, default=str))

    def idle(self, api: str, url: str) -> None:
        """An API scaled to zero (autoscaling.min_replicas 0): not loaded until a request comes."""
        self._said.pop(api, None)
        if self.tty:
            self._line(f"  ○ {api:<22} {url}  (scaled to zero: loads on its first request)")
        else:
            self._event("info", "idle", api=api, url=url)

    def waking(self, api: str, standby: int | None = None) -> None:
        if self.tty:
            self._line(f"  … {api:<22} cold start: loading for a held request...")
        else:
            self._event("info", "cold start", api=api, standby_pid=standby)

    def standby_ready(self, pid: int | None, seconds: float | None) -> None:
        """The warm standby for APIs scaled to zero is ready (said in the JSON log only: no news on a terminal)."""
        if not self.tty:
            self._event("info", "standby ready", pid=pid,
                        seconds=round(seconds, 3) if seconds is not None else None)

    def unloaded(self, api: str, idle_seconds: float) -> None:
        if self.tty:
            self._line(f"  ○ {api:<22} unloaded after {idle_seconds:.0f}s without requests (scaled to zero)")
        else:
            self._event("info", "unloaded", api=api, idle_seconds=round(idle_seconds, 1))

    def failed(self, api: str, error: str, traceback: str | None = None, keeps_serving: bool = False) -> None:
        key = f"{error}|{keeps_serving}"
        if self._said.get(api) == key:
            return  # each failure once: the same error again (another save) is not repeated
        self._said[api] = key
        suffix = "; the previous version keeps serving" if keeps_serving else ""
        if self.tty:
            self._line(f"  ✗ {api:<22} {error}{suffix}")
            if traceback:
                self._line("    " + traceback.rstrip().replace("\n", "\n    "))
        else:
            self._event("error", "failed" if not keeps_serving else "reload refused", api=api, error=error,
                        traceback=traceback, previous_version_serving=keeps_serving or None)

    def removed(self, api: str, endpoint: str) -> None:
        self._said.pop(api, None)
        if self.tty:
            gone = f": {endpoint} is no longer served (404)" if endpoint else ""
            self._line(f"  − {api:<22} folder removed{gone}")
        else:
            self._event("info", "removed", api=api, endpoint=endpoint or None)

    def note(self, message: str, level: str = "info") -> None:
        """A line about myelin local itself; `level="error"` for what stops it or fails a request (a busy port,
        no folder to serve, a router failure), so a JSON log reader filtering on errors sees them."""
        if self.tty:
            self._line(f"myelin local: {message}")
        else:
            self._event(level, message)

    # ------------------------------------------------------------------ children's output
    def child_log(self, api: str, line: bytes) -> None:
        """A line of a child's stdout (its JSON request log and events)."""
        if not self.tty:
            with self._lock:
                try:
                    self.out.write(line.decode("utf-8", "replace").rstrip("\n") + "\n")
                    self.out.flush()
                except (OSError, ValueError):
                    pass
            return
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            self._line(f"    {api}: {line.decode('utf-8', 'replace').rstrip()}")
            return
        if "status" in entry and "path" in entry:
            status = entry["status"]
            mark = "!" if status >= 500 else " "
            error = f"  {entry['error']}" if entry.get("error") else ""
            self._line(f"   {mark}{api:<22} {entry.get('method', '')} {entry['path']}  {status}  "
                       f"{entry.get('latency_ms', 0):.1f} ms{error}")
            if entry.get("level") == "error" and entry.get("traceback"):
                self._line("    " + entry["traceback"].rstrip().replace("\n", "\n    "))
            return
        message = entry.get("message", "")
        details = {k: v for k, v in entry.items() if k not in ("time", "level", "message", "api", "traceback")}
        extra = "  " + " ".join(f"{k}={v}" for k, v in details.items()) if details else ""
        self._line(f"    {api}: {entry.get('level', 'info')}: {message}{extra}")
        if entry.get("traceback"):
            self._line("    " + entry["traceback"].rstrip().replace("\n", "\n    "))

    def child_output(self, api: str, line: str) -> None:
        """A line of a child's stderr: whatever its predictor printed, as it is, named."""
        if self.tty:
            self._line(f"    {api}| {line}")
        else:
            self._event("info", "output", api=api, stream="stderr", text=line)
