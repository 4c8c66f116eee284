"""Running the app under uvicorn: one process, or a supervisor with N workers on one port.

SIGTERM starts a drain: readiness turns 503 and new predictions are refused at
once, in-flight requests finish (up to `serving.drain_timeout`), then the
process exits 0. With `processes > 1` the supervisor forwards the signal to
every worker, replaces workers that die while serving, and keeps `/metrics`
replica-wide through prometheus-client's multiprocess mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Generator

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
        app, host=host, port=port, loop=loop, http=protocol_for(settings, getattr(app, "on_write_timeout", None)),
        lifespan="on", access_log=False,
        server_header=False,
        # No client addresses are logged or used, so X-Forwarded-* rewriting would be pure per-request cost.
        proxy_headers=False, log_level=settings.uvicorn_log_level,
        timeout_graceful_shutdown=_FINAL_CLOSE_S, timeout_keep_alive=settings.keep_alive_timeout, backlog=4096,
        **extra,
    )


#: Signals that start a drain: SIGHUP too (a closed terminal, or a process manager's reload), never an abrupt exit.
DRAIN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Exit code of a worker whose predictor cannot load: its supervisor stops instead of restarting it forever.
EXIT_LOAD_FAILED = 3


class PortInUse(OSError):
    pass


def bind(host: str, port: int, backlog: int = 4096, uds: str | None = None) -> socket.socket:
    """The listening socket, bound before anything else starts, so a busy port is the first and only error.

    With `uds`, a Unix domain socket at that path instead (how `myelin local` reaches its per-API servers).
    """
    if uds:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(uds)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(uds)
        os.chmod(uds, 0o600)
        sock.listen(backlog)
        sock.set_inheritable(True)
        return sock
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise PortInUse(f"port {port} is already in use on {host} (another server? pick one with --port)") from None
        raise
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


#: After a drain, how long connections already accepted get to deliver a request (and have it refused)
#: before they are closed.
ACCEPTED_GRACE_S = 0.2


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM/SIGINT/SIGHUP drains the app before shutting down, and exits 0."""

    def __init__(self, config: uvicorn.Config, drain: Callable[[], Any], drain_timeout: float):
        super().__init__(config)
        self._drain = drain
        self._drain_timeout = drain_timeout
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """uvicorn's, with SIGHUP: a hang-up drains too instead of killing in-flight requests."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in DRAIN_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

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

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting first, then give requests already on accepted connections a moment to be read
        and refused (503 shutting_down, connection close) before uvicorn closes every idle connection:
        closing a connection that has an unread request on it would lose that request without an answer."""
        if self._draining and not self.force_exit:
            for server in self.servers:
                server.close()
            for sock in sockets or []:
                sock.close()
            await asyncio.sleep(ACCEPTED_GRACE_S)
        await super().shutdown(sockets)

    def _start_drain(self) -> None:
        async def drain_then_exit() -> None:
            try:
                await self._drain()
            finally:
                self.should_exit = True

        self._drain_task = self._loop.create_task(drain_then_exit())


def run_app(app: Any, host: str, port: int, drain_timeout: float, settings: Settings,
            sockets: list[socket.socket] | None = None) -> None:
    """Serve `app` (a MyelinApp) until SIGTERM/SIGINT/SIGHUP, draining first."""
    config = uvicorn_config(app, host, port, settings)
    app.apply_settings(settings)
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


def die_with_parent(parent_pid: int) -> None:
    """A worker never outlives its supervisor: the kernel sends it SIGTERM (a drain) when the parent dies.

    Linux's parent-death signal; elsewhere (or if prctl is unavailable) a thread watches the parent pid.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGTERM, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    except (OSError, AttributeError):
        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)


def _worker_main(folder: str, spec_json: str, host: str, port: int, sock: socket.socket, processes: int,
                 settings: Settings, parent_pid: int) -> None:
    die_with_parent(parent_pid)
    from .logs import separate_stdout, trace_crashes
    from .server import MyelinApp  # imported in the child, after PROMETHEUS_MULTIPROC_DIR is set

    separate_stdout()
    trace_crashes()
    import orjson

    spec = spec_from_dict(orjson.loads(spec_json), "the supervisor's spec")
    app = MyelinApp([(Path(folder), spec)], processes=processes, exit_when_stuck=True,
                    exit_on_load_failure=EXIT_LOAD_FAILED, on_loaded=announce_loaded, settings=settings)
    run_app(app, host, port, spec.serving.drain_timeout.seconds, settings, sockets=[sock])


METRICS_DIR_PREFIX = "myelin-metrics-"


def _remove_stale_metrics_dirs() -> None:
    """Metrics folders of supervisors that were killed (SIGKILL leaves no chance to clean up)."""
    root = Path(tempfile.gettempdir())
    for folder in root.glob(f"{METRICS_DIR_PREFIX}*-*"):
        pid = folder.name[len(METRICS_DIR_PREFIX):].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:
            pass


def announce_loaded(runtime: Any) -> None:
    """The one line `myelin serve` prints when a model is ready (stderr; the JSON log has it too)."""
    state = runtime.state.value
    if state == "ready":
        print(f"myelin: {runtime.name} loaded in {runtime.load_seconds:.2f}s (pid {os.getpid()})",
              file=sys.stderr, flush=True)


class Supervisor:
    """Runs `processes` workers sharing one listening socket; replaces workers that die."""

    RESTART_BACKOFF_S = (0.0, 0.5, 1.0, 2.0, 5.0)

    def __init__(self, folder: Path, spec: ApiSpec, host: str, port: int, settings: Settings,
                 log: RequestLog | None = None, uds: str | None = None):
        self.folder = folder
        self.settings = settings
        self.uds = uds
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
            args=(str(self.folder), self.spec.model_dump_json(), self.host, self.port, sock, self.n, self.settings,
                  os.getpid()),
            name=f"myelin-worker-{self.spec.name}",
        )
        proc.start()
        return proc

    def run(self) -> int:
        try:
            sock = bind(self.host, self.port, uds=self.uds)
        except PortInUse as err:
            print(f"myelin serve: {err}", file=sys.stderr, flush=True)
            return 2
        _remove_stale_metrics_dirs()
        metrics_dir = tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        from prometheus_client import multiprocess

        for sig in DRAIN_SIGNALS:
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
                        if worker.exitcode == EXIT_LOAD_FAILED:  # it can never serve: stop, do not loop
                            self.log.event("error", "a worker's predictor failed to load; stopping", api=self.spec.name,
                                           pid=worker.pid)
                            self.stopping = True
                            self._shutdown()
                            return 1
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
