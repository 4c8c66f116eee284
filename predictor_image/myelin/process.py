"""Running the app under uvicorn: one process, or a supervisor with N workers on one port.

SIGTERM starts a drain: readiness turns 503 and new predictions are refused at
once, in-flight requests finish (up to `serving.drain_timeout`), then the
process exits 0. With `processes > 1` the supervisor forwards the signal to
every worker, replaces workers that die while serving, and keeps `/metrics`
replica-wide through prometheus-client's multiprocess mode.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any, Callable

import uvicorn

from .logs import RequestLog
from .settings import Settings
from .spec import ApiSpec, spec_from_dict

# After the app's own drain, uvicorn closes what is left; this bounds that last step.
_FINAL_CLOSE_S = 2.0


def uvicorn_config(app: Any, host: str, port: int, settings: Settings, **extra: Any) -> uvicorn.Config:
    from .protection import protocol_for  # httptools plus header/body read timeouts

    loop = "uvloop" if sys.platform != "win32" else "asyncio"
    return uvicorn.Config(
        app, host=host, port=port, loop=loop, http=protocol_for(settings), lifespan="on", access_log=False,
        server_header=False,
        # No client addresses are logged or used, so X-Forwarded-* rewriting would be pure per-request cost.
        proxy_headers=False, log_level=settings.uvicorn_log_level,
        timeout_graceful_shutdown=_FINAL_CLOSE_S, timeout_keep_alive=settings.keep_alive_timeout, backlog=4096,
        **extra,
    )


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM/SIGINT drains the app before shutting down, and exits 0."""

    def __init__(self, config: uvicorn.Config, drain: Callable[[], Any], drain_timeout: float):
        super().__init__(config)
        self._drain = drain
        self._drain_timeout = drain_timeout
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in _captured_signals: uvicorn would re-raise it after shutdown and the exit code
        # would be 143 instead of 0 for a clean drain.
        if self._loop is None:
            self.should_exit = True
            return
        if self._draining:
            # A second SIGINT (Ctrl-C twice) stops at once; a SIGTERM during the drain (e.g. a supervisor
            # forwarding the terminal's Ctrl-C to its workers) must not cut the drain short.
            if sig == signal.SIGINT:
                self.should_exit = True
                self.force_exit = True
            return
        self._draining = True
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        async def drain_then_exit() -> None:
            try:
                await self._drain()
            finally:
                self.should_exit = True

        self._drain_task = self._loop.create_task(drain_then_exit())


def run_app(app: Any, host: str, port: int, drain_timeout: float, settings: Settings,
            sockets: list[socket.socket] | None = None) -> None:
    """Serve `app` (a MyelinApp) until SIGTERM/SIGINT, draining first."""
    config = uvicorn_config(app, host, port, settings)
    server = DrainingServer(config, lambda: app.drain(drain_timeout), drain_timeout)
    server.run(sockets=sockets)
    # A predict still running past the grace period lives in a thread that cannot be interrupted, and
    # the interpreter would wait for it at exit: leave now, as the grace period promises.
    _exit_now(0)


def _exit_now(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _worker_main(folder: str, spec_json: str, host: str, port: int, sock: socket.socket, processes: int,
                 settings: Settings) -> None:
    from .server import MyelinApp  # imported in the child, after PROMETHEUS_MULTIPROC_DIR is set

    import orjson

    spec = spec_from_dict(orjson.loads(spec_json), "the supervisor's spec")
    app = MyelinApp([(Path(folder), spec)], processes=processes, settings=settings)
    run_app(app, host, port, spec.serving.drain_timeout.seconds, settings, sockets=[sock])


class Supervisor:
    """Runs `processes` workers sharing one listening socket; replaces workers that die."""

    RESTART_BACKOFF_S = (0.0, 0.5, 1.0, 2.0, 5.0)

    def __init__(self, folder: Path, spec: ApiSpec, host: str, port: int, settings: Settings,
                 log: RequestLog | None = None):
        self.folder = folder
        self.settings = settings
        self.spec = spec
        self.host = host
        self.port = port
        self.n = spec.serving.processes
        self.log = log or RequestLog()
        self.stopping = False
        self.workers: list[multiprocessing.Process | None] = []
        self._ctx = multiprocessing.get_context("spawn")
        self._crashes: list[float] = []

    def _start_worker(self, sock: socket.socket) -> multiprocessing.Process:
        proc = self._ctx.Process(
            target=_worker_main,
            args=(str(self.folder), self.spec.model_dump_json(), self.host, self.port, sock, self.n, self.settings),
            name=f"myelin-worker-{self.spec.name}",
        )
        proc.start()
        return proc

    def run(self) -> int:
        metrics_dir = tempfile.mkdtemp(prefix="myelin-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        from prometheus_client import multiprocess

        config = uvicorn_config(None, self.host, self.port, self.settings)
        sock = config.bind_socket()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            self.workers = [self._start_worker(sock) for _ in range(self.n)]
            self.log.event("info", "supervisor started", api=self.spec.name, processes=self.n,
                           pids=[w.pid for w in self.workers], port=self.port)
            while not self.stopping:
                time.sleep(0.2)
                for i, worker in enumerate(self.workers):
                    if worker is not None and not worker.is_alive() and not self.stopping:
                        multiprocess.mark_process_dead(worker.pid)
                        self.log.event("error", "worker died; starting a replacement", api=self.spec.name,
                                       pid=worker.pid, exitcode=worker.exitcode)
                        self._backoff()
                        if not self.stopping:
                            self.workers[i] = self._start_worker(sock)
            return self._shutdown()
        finally:
            sock.close()
            shutil.rmtree(metrics_dir, ignore_errors=True)

    def _backoff(self) -> None:
        now = time.monotonic()
        self._crashes = [t for t in self._crashes if now - t < 60] + [now]
        delay = self.RESTART_BACKOFF_S[min(len(self._crashes) - 1, len(self.RESTART_BACKOFF_S) - 1)]
        end = now + delay
        while time.monotonic() < end and not self.stopping:
            time.sleep(0.05)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if self.stopping:  # second signal: stop waiting
            for worker in self.workers:
                if worker is not None and worker.is_alive():
                    worker.kill()
        self.stopping = True

    def _shutdown(self) -> int:
        alive = [w for w in self.workers if w is not None and w.is_alive()]
        for worker in alive:
            os.kill(worker.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.spec.serving.drain_timeout.seconds + _FINAL_CLOSE_S + 1.0
        for worker in alive:
            worker.join(max(0.0, deadline - time.monotonic()))
        forced = [w for w in alive if w.is_alive()]
        for worker in forced:
            worker.kill()
            worker.join()
        self.log.event("info", "supervisor stopped", api=self.spec.name, forced_kills=len(forced))
        return 1 if forced else 0
