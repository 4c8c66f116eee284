"""One API's server process under `myelin local`: `myelin serve <folder> --uds <socket>`, its output and lifecycle.

Each API runs in a process of its own, as in its container: its own modules (two APIs may both `import helper`),
its own `predictor.env`, its own `serving.processes`. The router talks to it over a private Unix socket.

As in its container, whatever the API's process starts goes with it: the process leads a process group of its
own, and once it has ended (drained, killed, crashed) every process left in that group (a predictor's helper
subprocess, a `fork()`, a worker) is killed, as Kubernetes ends every process of a container. And as the
cluster's livenessProbe does, `/healthz` is probed every `liveness_period` seconds while the process serves;
after `LIVENESS_FAILURES` failures in a row (503 `stuck`, no answer within the probe's timeout: a frozen process
or a blocked event loop) the group is killed, and the supervisor restarts it with its back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import signal
import ssl
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import httpx

from ..contract import HEALTH_PATH, READY_PATH
from ..standby import ASSIGNED_LINE

if TYPE_CHECKING:
    from .standby import Standby

#: The cluster's livenessProbe: failures in a row before the process is killed, and the longest a probe waits.
LIVENESS_FAILURES = 3
LIVENESS_TIMEOUT_S = 5.0

#: How often a starting process's /readyz is asked when its output gives no sign (it says when it has loaded).
READY_POLL_S = 0.05

#: Idle connections to the API's socket kept for reuse (more are opened as needed, and closed once done).
KEEPALIVE_CONNECTIONS = 64

_LOADED = "loaded in "
_FAILED = "failed to load: "


_TLS_CONTEXT: ssl.SSLContext | None = None


def unused_tls_context() -> ssl.SSLContext:
    """The TLS context of every client to an API's socket, made once: the socket is plain HTTP and never uses
    it, but httpx builds one per client otherwise (loading the CA bundle: 60-80 ms of the router's core, on the
    way of every cold start, reload and restart). `myelin local` makes it at its start (`LocalServer`)."""
    global _TLS_CONTEXT
    if _TLS_CONTEXT is None:
        _TLS_CONTEXT = ssl.create_default_context()
    return _TLS_CONTEXT


class ChildState(str, enum.Enum):
    STARTING = "loading"
    READY = "ready"
    FAILED = "failed"
    EXITED = "exited"  # it was serving and its process ended on its own (killed, crashed, os._exit)
    DRAINING = "draining"
    STOPPED = "stopped"


def describe_exit(code: int | None, killed_for: str | None = None) -> str:
    """How a process ended, in words: `was killed by SIGKILL (...)`, `exited with code 1`."""
    if killed_for is not None:
        return f"was killed: {killed_for}"
    if code is None:
        return "ended"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (as the out-of-memory killer does)" if -code == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {code}"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """The child gets SIGTERM (a drain) when `myelin local` dies, however it dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class ApiProcess:
    """A child server for one version (generation) of one API folder."""

    def __init__(self, name: str, folder: Path, generation: int, socket_dir: Path,
                 on_stdout: Callable[["ApiProcess", bytes], None], on_stderr: Callable[["ApiProcess", str], None],
                 endpoint: str | None = None, max_body: int = 10 * 2**20, env: dict[str, str] | None = None,
                 on_exit: Callable[["ApiProcess", int], None] | None = None, restart: int = 0,
                 liveness_period: float = 10.0):
        self.name = name
        self.endpoint = endpoint
        self.max_body = max_body
        self.folder = folder
        self.generation = generation
        self.uds = socket_dir / (f"{name}-{generation}.sock" if not restart else f"{name}-{generation}.r{restart}.sock")
        self.state = ChildState.STARTING
        self.error: str | None = None
        self.traceback: str | None = None  # of a load failure, from the child's log
        self.load_seconds: float | None = None
        self.in_flight = 0  # requests the router is proxying to it
        self.uploading = 0  # of those, requests whose body is still coming from the client
        self.returncode: int | None = None
        self._on_exit = on_exit
        self._stopping = False
        self._watcher: asyncio.Task | None = None
        self._prober: asyncio.Task | None = None
        self.liveness_period = liveness_period
        self.killed_for: str | None = None  # why the supervisor killed it (its liveness probe), if it did
        self._on_stdout = on_stdout
        self._on_stderr = on_stderr
        self._proc: asyncio.subprocess.Process | None = None
        self._pumps: list[asyncio.Task] = []
        self._stderr_tail: list[str] = []
        self._started = 0.0
        self.client: httpx.AsyncClient | None = None
        self._env = env or {}
        self.from_standby = False  # its process was the warm standby (local/standby.py), not a new one
        self.assignment_taken = False  # that standby said it read its assignment (ASSIGNED_LINE)
        self._sign = asyncio.Event()  # set by its stderr pump on "loaded in" / "failed to load" / end of output

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # ------------------------------------------------------------------ start
    @staticmethod
    def base_environment() -> dict[str, str]:
        """The environment every API's `myelin serve` starts from: `myelin local`'s own, output unbuffered."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("PORT", None)
        return env

    def environment(self) -> dict[str, str]:
        """The environment its `myelin serve` gets: the base one and the API's extras."""
        env = {**self.base_environment(), **self._env}
        env.pop("PORT", None)
        return env

    def argv(self) -> list[str]:
        """Its `myelin serve` command line, after `python -m myelin.cli`."""
        return ["serve", str(self.folder), "--uds", str(self.uds)]

    async def start(self, standby: "Standby | None" = None) -> bool:
        """Start the server and wait until it is ready (True) or has failed (False, `error` says why).

        With `standby` (a warm standby that `usable_for` this process's environment and working folder), that
        process becomes this one: the same argv, environment and working folder, the same pipes and process
        group; a standby gone meanwhile falls back to a new process."""
        self._started = time.monotonic()
        env = self.environment()
        if standby is not None:
            try:
                self._proc = await standby.assign(self.argv(), env, os.getcwd())
                self.from_standby = True
            except (OSError, RuntimeError):  # it died between the check and the assignment: a new process
                await standby_stop(standby)
                self._proc = None
            except asyncio.CancelledError:  # the wake was cancelled while handing it over: it is nobody's
                standby.kill_now(assigned_too=True)
                raise
        if self._proc is None:
            self._proc = await self._new_process(env)
        self._pumps = [asyncio.create_task(self._pump_stdout()), asyncio.create_task(self._pump_stderr())]
        # No bound on connections: the API's own admission (max_concurrency, max_queue_length) decides, as behind
        # the ALB; a pool limit here would queue the excess in the router with no bound and no deadline.
        self.client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(self.uds), verify=unused_tls_context(), limits=httpx.Limits(
                max_connections=None, max_keepalive_connections=KEEPALIVE_CONNECTIONS)),
            base_url="http://myelin-local", timeout=None)
        while True:
            if self._proc.returncode is not None:
                self._kill_group()  # a helper it started would hold its pipes open: the pumps would never end
                await asyncio.gather(*self._pumps, return_exceptions=True)  # the last words on stderr
                if self.from_standby and not self.assignment_taken:
                    # The standby ended (killed, crashed) before it read its assignment: nothing of this API
                    # ran in it. A new process, as when no standby was ready.
                    self.from_standby = False
                    self._stderr_tail = []
                    self.error = None
                    self._proc = await self._new_process(env)
                    self._pumps = [asyncio.create_task(self._pump_stdout()), asyncio.create_task(self._pump_stderr())]
                    continue
                self.state = ChildState.FAILED
                self.error = self.error or self._tail_error()
                await self._close_client()
                return False
            if self.uds.exists():
                try:
                    r = await self.client.get(READY_PATH, timeout=2)
                    if r.status_code == 200:
                        self.state = ChildState.READY
                        if self.load_seconds is None:
                            self.load_seconds = time.monotonic() - self._started
                        self._watcher = asyncio.create_task(self._watch_exit())
                        self._prober = asyncio.create_task(self._probe_liveness())
                        return True
                except httpx.HTTPError:
                    pass
            await self._next_sign()

    async def _new_process(self, env: dict[str, str]) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "myelin.cli", *self.argv(),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=env, preexec_fn=_die_with_parent, start_new_session=True,  # a process group of its own
        )

    async def _next_sign(self) -> None:
        """Until its stderr says it loaded (or failed), or READY_POLL_S passed: readiness is then asked at once,
        not at the next poll (a process with `serving.processes` > 1 says it per worker; the poll covers it)."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._sign.wait(), READY_POLL_S)
        self._sign.clear()

    async def _watch_exit(self) -> None:
        """A serving process that ends on its own (SIGKILL from the OOM killer, a crash, os._exit) is reported
        the moment it ends: waiting on the process, not polling its readiness."""
        assert self._proc is not None
        code = await self._proc.wait()
        self.returncode = code
        self._kill_group()  # what it left behind: helpers, forks (its workers die with it anyway)
        if self._prober is not None and self._prober is not asyncio.current_task():
            self._prober.cancel()
        if self._stopping or self.state is not ChildState.READY:
            return
        self.state = ChildState.EXITED
        if self._on_exit is not None:
            self._on_exit(self, code)

    async def _probe_liveness(self) -> None:
        """GET /healthz every `liveness_period` s (timeout min(5 s, period)); LIVENESS_FAILURES failures in a row
        kill the process group (SIGKILL: a frozen process ignores SIGTERM) and the exit watcher restarts it."""
        timeout = min(LIVENESS_TIMEOUT_S, self.liveness_period)
        failures = 0
        while self.state is ChildState.READY and not self._stopping:
            await asyncio.sleep(self.liveness_period)
            client = self.client
            if client is None or self.state is not ChildState.READY or self._stopping:
                return
            try:
                r = await client.get(HEALTH_PATH, timeout=timeout)
                problem = None if r.status_code == 200 else f"{HEALTH_PATH} answered {r.status_code}: " + _why(r)
            except httpx.TimeoutException:
                problem = f"{HEALTH_PATH} did not answer within {timeout:g}s"
            except httpx.HTTPError as err:
                problem = f"{HEALTH_PATH} failed: {type(err).__name__}"
            if problem is None:
                failures = 0
                continue
            failures += 1
            if failures >= LIVENESS_FAILURES and self.state is ChildState.READY and not self._stopping:
                self.killed_for = f"its liveness probe failed {failures} times in a row ({problem})"
                self._kill_group()
                return

    def _kill_group(self) -> None:
        """SIGKILL every process of this API's process group (the server, its workers, whatever it started)."""
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)

    def _tail_error(self) -> str:
        lines = [line for line in self._stderr_tail if line.strip()]
        code = self._proc.returncode if self._proc else None
        return lines[-1] if lines else f"the server exited with code {code} before it was ready"

    async def _pump_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        async for line in self._proc.stdout:
            self._on_stdout(self, line)

    async def _pump_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        async for raw in self._proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if self.from_standby and not self.assignment_taken and line.startswith(ASSIGNED_LINE):
                self.assignment_taken = True
                continue
            if _FAILED in line and line.startswith("myelin serve: "):
                self.error = line.split(_FAILED, 1)[1]
                self._sign.set()
                continue  # said once, by the router's console
            if line.startswith("myelin: ") and (_LOADED in line or " at unix:" in line):
                if _LOADED in line:
                    with contextlib.suppress(ValueError):
                        self.load_seconds = float(line.split(_LOADED, 1)[1].split("s", 1)[0])
                    self._sign.set()
                continue
            self._stderr_tail = (self._stderr_tail + [line])[-20:]
            self._on_stderr(self, line)
        self._sign.set()  # its output ended: it has exited (or is about to)

    # ------------------------------------------------------------------ stop
    async def stop(self, drain_timeout: float) -> None:
        """Drain (SIGTERM: in-flight requests finish), then make sure it is gone."""
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            self.state = ChildState.DRAINING
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), drain_timeout + 5)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        self._kill_group()  # its container is gone: so is everything it started
        if proc is not None:
            await asyncio.gather(*self._pumps, return_exceptions=True)
        if self.state not in (ChildState.FAILED, ChildState.EXITED):
            self.state = ChildState.STOPPED
        for task in (self._watcher, self._prober):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        await self._close_client()
        with contextlib.suppress(FileNotFoundError):
            self.uds.unlink()

    def kill_now(self) -> None:
        """Synchronous last resort (the router exits): no drain."""
        self._stopping = True
        if self._proc is not None and self._proc.returncode is None:
            self._kill_group()

    async def _close_client(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None


async def standby_stop(standby: "Standby") -> None:
    standby.assigned = False  # it never became the API's: stop it as a standby
    await standby.stop()


def _why(response: httpx.Response) -> str:
    """The error message of a probe's JSON answer, shortened (the status otherwise)."""
    try:
        return str(response.json()["error"]["message"])[:200]
    except (ValueError, KeyError, TypeError):
        return response.reason_phrase
