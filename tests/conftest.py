"""Shared test helpers: start real Myelin servers on loopback and stop them by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(proc: subprocess.Popen, port: int, what: str, log: Path, timeout: float = 60.0) -> None:
    """Until a helper server (e.g. moto) accepts connections on 127.0.0.1:port; AssertionError with its log if it
    exits or does not listen in time (then it is stopped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}: {log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    stop_process(proc)
    raise AssertionError(f"{what} did not listen on port {port} in {timeout:.0f}s")


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGTERM by pid, then SIGKILL if it has not exited within `timeout`; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class ServerProcess:
    """A `myelin ...` subprocess on a free loopback port; logs captured to files."""

    def __init__(self, args: list[str], tmp_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.stdout_path = tmp_path / f"server-{self.port}.out"
        self.stderr_path = tmp_path / f"server-{self.port}.err"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env.pop("PORT", None)
        if cwd is None:
            # An AsyncAPI's default store is .myelin/ in the working directory: in the checkout, servers of tests
            # running at the same time (pytest-xdist workers) would share it; the servers of one test share theirs,
            # as they did .myelin/. A test may still pass its own.
            full_env.setdefault("MYELIN_STATE_DIR", str(tmp_path / "myelin-state"))
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "myelin.cli", *args, "--port", str(self.port)],
            stdout=self._out, stderr=self._err, env=full_env, cwd=str(cwd or ROOT),
        )

    def wait_ready(self, timeout: float = 60.0, status: int = 200) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.stderr()}\n{self.stdout()}")
            try:
                if httpx.get(self.base + "/readyz", timeout=2).status_code == status:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not ready in {timeout}s:\n{self.stderr()}\n{self.stdout()}")

    def wait_settled(self, timeout: float = 90.0) -> dict[str, str]:
        """`myelin local`: wait until no API is loading any more; returns each API's state (ready or failed)."""
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            try:
                states = {a["name"]: a["state"] for a in httpx.get(self.base + "/info", timeout=2).json()["apis"]}
                if states and all(s in ("ready", "failed", "idle") for s in states.values()):
                    return states
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"APIs still loading after {timeout}s: {states}\n{self.stderr()}\n{self.stdout()}")

    def wait_workers(self, api: str, n: int, timeout: float = 60.0) -> None:
        """With `processes > 1`, /readyz answers for one worker: wait until the replica's metrics count n ready."""
        want = f'myelin_ready_processes{{api="{api}"}} {float(n)}'
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if want in httpx.get(self.base + "/metrics", timeout=2).text:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{n} ready workers not seen in {timeout}s:\n{self.stderr()}\n{self.stdout()}")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def log_lines(self) -> list[dict]:
        import json

        lines = []
        for line in self.stdout().splitlines():
            line = line.strip()
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def load_failure(self, timeout: float = 60.0) -> str:
        """`myelin serve` of an API that cannot load exits 1 (a crash loop in the cluster, with the reason): wait
        for that exit and return its one `<api> failed to load: <where>: <message>` line from stderr."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"myelin serve kept running:\n{self.stderr()}") from None
        assert code == 1, self.stderr()
        lines = [line for line in self.stderr().splitlines() if "failed to load" in line]
        assert len(lines) == 1, self.stderr()
        return lines[0]

    def stop(self) -> int:
        code = stop_process(self.proc, timeout=15)
        self._out.close()
        self._err.close()
        return code


@pytest.fixture
def start_server(tmp_path):
    """start_server("serve", "path/to/api", env={...}) -> a ready ServerProcess, stopped at teardown by pid."""
    servers: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, wait: bool = True, ready_status: int = 200) -> ServerProcess:
        server = ServerProcess(list(args), tmp_path, env)
        servers.append(server)
        if wait:
            server.wait_ready(status=ready_status)
            if args and args[0] == "local":
                server.wait_settled()
        return server

    yield start
    for server in servers:
        server.stop()


# -- running in parallel (pytest-xdist, pytest.ini) ------------------------------------------------------------------
#: Test folders whose modules share session-scoped fixtures (the Pulumi program's runs of both stacks; `myelin local`
#: serving the protocol examples): each folder is one unit of work for one worker, so these start once per run.
SHARED_SESSION_FOLDERS = ("tests/infra/", "tests/protocols/")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """--dist loadscope (a module, or a class, to one worker), except that each folder of SHARED_SESSION_FOLDERS
    goes to one worker whole."""
    if config.getoption("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FolderScopeScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            for folder in SHARED_SESSION_FOLDERS:
                if nodeid.startswith(folder):
                    return folder
            return super()._split_scope(nodeid)

    return FolderScopeScheduling(config, log)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "solo: runs while no other test of the run does (its assertions measure load, latency or CPU "
                   "time); on a module (pytestmark), for the whole module, its module-scoped fixtures included")


_SOLO_LOCK = ROOT / ".myelin" / "test-locks" / "solo.lock"
_holding_solo = False


@contextlib.contextmanager
def _solo_lock(exclusive: bool):
    """flock on _SOLO_LOCK: exclusive for a solo test or module, shared for any other test (so the worker processes
    run other tests side by side, and a solo one alone). Uncontended in a one-process run."""
    global _holding_solo
    if _holding_solo:  # inside a solo module: this process holds the exclusive lock already
        yield
        return
    import fcntl

    _SOLO_LOCK.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(_SOLO_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        _holding_solo = exclusive
        yield
    finally:
        _holding_solo = False
        os.close(fd)


@pytest.fixture(scope="module", autouse=True)
def _solo_module(request):
    """A module marked solo holds the lock from before its module-scoped fixtures start until they stop."""
    if any(m.name == "solo" for m in request.node.own_markers):
        with _solo_lock(exclusive=True):
            yield
    else:
        yield


@pytest.fixture(autouse=True)
def _solo_test(request):
    with _solo_lock(exclusive=request.node.get_closest_marker("solo") is not None):
        yield
