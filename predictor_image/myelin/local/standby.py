"""The warm standby: one `myelin serve` process that `myelin local` starts ahead of need for its APIs scaled to zero.

A cold start in a new process pays the interpreter's start and the runtime's imports (FastAPI, pydantic,
uvicorn: about a second on a busy laptop) before the predictor even begins to load. So while any API scales to
zero, `myelin local` keeps ONE standby (shared by all of them) that has already paid that (`myelin/standby.py`)
and waits on its stdin. A wake hands it the exact argv, environment and working folder a new process would
have got; it becomes that API's process (`ApiProcess.start(standby=...)`): the same pid, process group, pipes,
readiness, liveness probe, exit watcher and restarts as a process started for the API. A new standby is
started once the wake is over and nothing else loads (`LocalServer._keep_standby`).

The standby is no API's process: it is in no route, no API's /info entry and no metrics; `/info` shows it on
its own (`standby`). It leads a process group of its own, gets SIGTERM when `myelin local` dies however it
dies (Linux; anywhere, the end of its stdin ends it), and is killed when `myelin local` stops. A standby that ends on its own (killed -9, a crash) is
replaced with the same back-off as an API's process; a wake that finds none ready starts a new process, as
before.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from typing import Callable

import orjson

from ..standby import READY_LINE
from .child import _die_with_parent

#: The environment variables an assignment may change from the standby's own start: read by the runtime when
#: `myelin serve` runs, never by the interpreter at its start (PYTHON*, LD_*, the locale) nor at import time.
ASSIGNABLE_ENV_PREFIX = "MYELIN_"


def env_difference(a: dict[str, str], b: dict[str, str]) -> set[str]:
    """The names whose value differs between two environments (set in one only, or to different values)."""
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


class Standby:
    """One pre-started `python -m myelin.standby` process, until it is assigned to an API or stopped."""

    def __init__(self, env: dict[str, str], cwd: str, on_stderr: Callable[[str], None],
                 on_exit: Callable[["Standby"], None]):
        self.env = env  # what it was started with: an assignment may only change MYELIN_* variables of it
        self.cwd = cwd
        self.ready = False
        self.assigned = False
        self.started_at = 0.0
        self.ready_seconds: float | None = None  # start -> imports done
        self._on_stderr = on_stderr
        self._on_exit = on_exit
        self._proc: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task] = []
        self._ready_event = asyncio.Event()
        self.tail: list[str] = []  # what it said on stderr before it was ready (an import error)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc is not None else None

    def describe(self) -> dict:
        return {"pid": self.pid, "state": "ready" if self.ready else "starting",
                "ready_seconds": round(self.ready_seconds, 3) if self.ready_seconds is not None else None}

    async def start(self) -> None:
        self.started_at = time.monotonic()
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "myelin.standby", cwd=self.cwd,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=self.env, preexec_fn=_die_with_parent, start_new_session=True,  # as an API's process is started
        )
        self._tasks = [asyncio.create_task(self._until_ready()), asyncio.create_task(self._watch())]

    async def wait_ready(self) -> bool:
        await self._ready_event.wait()
        return self.ready

    async def _until_ready(self) -> None:
        """Read its stderr up to the ready line, and no further: what follows is the API's, read by its pumps."""
        assert self._proc is not None and self._proc.stderr is not None
        while True:
            raw = await self._proc.stderr.readline()
            if not raw:
                break  # it ended before it was ready
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line.startswith(READY_LINE):
                self.ready = True
                self.ready_seconds = time.monotonic() - self.started_at
                break
            self.tail = (self.tail + [line])[-20:]
            self._on_stderr(line)
        self._ready_event.set()

    async def _watch(self) -> None:
        assert self._proc is not None
        await self._proc.wait()  # (before its assignment it starts nothing: no process group left to kill)
        self._ready_event.set()
        if not self.assigned:
            self._on_exit(self)

    def usable_for(self, env: dict[str, str], cwd: str) -> bool:
        """Ready, alive, and the assignment changes nothing the interpreter or an import has already read."""
        return (self.ready and self.alive and not self.assigned and cwd == self.cwd
                and all(k.startswith(ASSIGNABLE_ENV_PREFIX) for k in env_difference(self.env, env)))

    async def assign(self, argv: list[str], env: dict[str, str], cwd: str) -> asyncio.subprocess.Process:
        """Hand it its API: from here on it is that API's process (the caller owns it). OSError if it is gone."""
        assert self._proc is not None and self._proc.stdin is not None
        self.assigned = True
        for task in self._tasks:
            task.cancel()
        self._ready_event.set()  # (nobody waits on it any more)
        stdin = self._proc.stdin
        stdin.write(orjson.dumps({"argv": argv, "env": env, "cwd": cwd}) + b"\n")
        await stdin.drain()  # raises (BrokenPipeError, ConnectionResetError) if it died meanwhile
        stdin.close()
        return self._proc

    def _kill_group(self) -> None:
        if self._proc is not None and self._proc.returncode is None:  # an ended one's pid may be another's now
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)

    def kill_now(self, assigned_too: bool = False) -> None:
        """Synchronous (the router exits; or an assignment cancelled half-way, `assigned_too`): the standby
        and anything in its process group."""
        if not self.assigned or assigned_too:
            self._kill_group()

    async def stop(self) -> None:
        """Give it up: killed (it holds no request and no state), its pipes drained."""
        if self.assigned:
            return
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self._ready_event.set()  # whoever waits for it to be ready: it never will be
        self._kill_group()
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                await self._proc.wait()
            if self._proc.stdin is not None:
                self._proc.stdin.close()
