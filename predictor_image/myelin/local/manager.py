"""Which API folders `myelin local` serves, which version of each gets the traffic, and how versions change.

Every folder under the watched root is an API (`LocalApi`). Each is served by a child server (`ApiProcess`).
On any change in a folder, a new version starts beside the serving one; traffic moves to it (one route
table swap) once it is ready; the old one then finishes its in-flight requests and stops, in the background,
so a long request on an old version never holds up another API. A newer edit of the same folder supersedes a
version still loading. A version that cannot start (bad api.yaml, missing packages, a load error) is refused:
the previous one keeps serving, and `/info` and the local page say which version serves and why the other
was refused. A folder that appears is started; one that disappears stops being served (404).

A serving process that ends on its own (killed by the OOM killer, a crash, a job calling os._exit), or that its
liveness probe kills (stuck past serving.stuck_timeout, frozen: child.py), is seen the
moment it ends, shown on the console, `/info` and the page, and started again with Kubernetes' back-off
(`RestartBackoff`); while it is down its requests get 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import os
import contextlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from .. import contract
from ..errors import retry_after_seconds
from ..spec import SPEC_FILE, ApiSpec, SpecError, load_api_spec, parse_model_uri
from . import requirements, splitter
from .child import ApiProcess, ChildState, describe_exit, unused_tls_context
from .console import Console
from .scale_metrics import ScaleToZeroMetrics
from .standby import Standby

REQUIREMENTS_RECHECK_S = 3.0
UNLOAD_CHECK_S = 0.25
#: After a wake (or a version loading), how long the next warm standby waits before it starts: its imports take
#: a core for about a second, which the woken API's first requests should not share.
STANDBY_QUIET_S = 1.0
#: Request header the router stamps with a held request's arrival (Unix seconds), and the child setting that
#: makes the API's server keep the request's deadline from that arrival (myelin/arrival.py).
ARRIVAL_HEADER = b"x-myelin-arrival"
ARRIVAL_ENV = {contract.ARRIVAL_HEADER_ENV: ARRIVAL_HEADER.decode()}


class RestartBackoff:
    """When to start a process that ended on its own again: Kubernetes' CrashLoopBackOff, scaled to a laptop.

    As the kubelet does, the first restart is immediate and each further one waits twice as long as the one
    before (here 1 s, 2 s, 4 s ... capped at `MAX_S`; the kubelet: 10 s ... 5 min); a process that then runs
    `RESET_AFTER_S` without ending starts the count again (the kubelet: 10 min)."""

    FIRST_S = 1.0
    MAX_S = 30.0
    RESET_AFTER_S = 60.0

    def __init__(self) -> None:
        self.crashes = 0  # ends since the count last started again
        self.running_since: float | None = None

    def started(self, now: float) -> None:
        self.running_since = now

    def ended(self, now: float) -> float:
        """A process ended at `now`: the seconds to wait before starting the next one."""
        if self.running_since is not None and now - self.running_since >= self.RESET_AFTER_S:
            self.crashes = 0
        self.running_since = None
        self.crashes += 1
        if self.crashes == 1:
            return 0.0
        return min(self.MAX_S, self.FIRST_S * 2 ** (self.crashes - 2))


def _guess_endpoint(folder: Path) -> str:
    """The path an API with an invalid api.yaml is meant to serve, as far as the file says (else /<folder>)."""
    import yaml

    try:
        data = yaml.safe_load((folder / SPEC_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeError, yaml.YAMLError):
        data = None
    if isinstance(data, dict):
        endpoint = (data.get("networking") or {}).get("endpoint") if isinstance(data.get("networking"), dict) else None
        if isinstance(endpoint, str) and endpoint.startswith("/"):
            return endpoint
        if isinstance(data.get("name"), str):
            return "/" + data["name"]
    return "/" + folder.name


def _newest_change(folder: Path) -> float:
    """The latest modification time of the files an API is made of (its folder's code, specs, requirements)."""
    newest = 0.0
    try:
        for entry in os.scandir(folder):
            if entry.is_file() and entry.name.endswith((".py", ".yaml", ".yml", ".txt")):
                newest = max(newest, entry.stat().st_mtime)
    except OSError:
        pass
    return newest


class LocalApi:
    """One API folder: its spec, the child serving it, the one loading, and what went wrong."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.spec: ApiSpec | None = None
        self.serving: ApiProcess | None = None
        self.pending: ApiProcess | None = None
        self.generation = 0
        self.error: str | None = None  # why this folder is not (or no longer) served by its latest version
        self.traceback: str | None = None
        self.refused: dict[str, Any] | None = None  # the last version refused while an older one kept serving
        self.blocked_on_requirements = False
        self.task: asyncio.Task | None = None
        self.guessed_endpoint: str | None = None  # while api.yaml is invalid: where its requests will come
        # Scale to zero (autoscaling.min_replicas 0): the cold start under way, requests held for it, when the
        # API last had a request, how long its last cold start took.
        self.waking: asyncio.Task | None = None
        self.wake_started = 0.0
        self.held = 0
        self.last_active = time.monotonic()
        self.synced_at = 0.0  # wall time the folder was last read (rescan: a failed API's files changed since?)
        self.last_cold_start: float | None = None
        self.last_cold_start_from: str | None = None  # "standby" (the warm standby became it) or "new process"
        # Supervision: how often its process was started again after ending on its own, how the last one
        # ended, and (while it is down) when the next one starts (monotonic).
        self.restarts = 0
        self.backoff = RestartBackoff()
        self.last_exit: dict[str, Any] | None = None
        self.restart_at: float | None = None
        self.not_before = 0.0  # scaled to zero: the next cold start waits for the back-off
        self.last_load: float | None = None  # load time of the process that ended (Retry-After while down)
        self._keys: tuple[Any, Any] | None = None  # (spec, ApiKeys) read for that spec
        self.splitter: splitter.LocalSplitter | None = None  # a TrafficSplitter: routing, no process

    @property
    def scales_to_zero(self) -> bool:
        # A RealtimeAPI with min_replicas 0. An AsyncAPI's min_replicas 0 is about its workers on an empty queue
        # in the cloud (its gateway stays up); here one process is gateway and worker, and stays loaded.
        return (self.spec is not None and self.spec.kind == "RealtimeAPI"
                and self.spec.autoscaling.min_replicas == 0)

    @property
    def name(self) -> str:
        return self.spec.name if self.spec is not None else self.folder.name

    @property
    def endpoint(self) -> str | None:
        return self.serving_endpoint or (self.spec.endpoint if self.spec is not None else None)

    @property
    def serving_endpoint(self) -> str | None:
        return self.serving.endpoint if self.serving is not None else None

    @property
    def state(self) -> str:
        if self.splitter is not None:
            return "ready"
        if self.serving is not None and self.serving.state is ChildState.READY:
            return "ready"
        if self.restart_at is not None:
            return "restarting"
        if (self.pending is not None or (self.task is not None and not self.task.done())
                or (self.waking is not None and not self.waking.done())):
            return "loading"
        if self.error:
            return "failed"
        return "idle" if self.scales_to_zero else "stopped"

    def retry_after(self) -> int:
        """Seconds until a process that ended should be serving again: its back-off, then its last load time."""
        wait = max(0.0, (self.restart_at or self.not_before) - time.monotonic())
        load = self.serving.load_seconds if self.serving is not None and self.serving.load_seconds else 0.0
        return retry_after_seconds(wait + (load or self.last_load or 1.0))

    def api_keys(self) -> Any:
        """The ApiKeys of the current spec (None without networking.auth), read once per spec."""
        spec = self.spec
        if spec is None or spec.networking.auth is None:
            return None
        if self._keys is None or self._keys[0] is not spec:
            from ..http_io import ApiKeys
            from ..runtime import _read_keys

            auth = spec.networking.auth
            keys = [k.strip() for k in _read_keys(auth.api_keys_env).split(",") if k.strip()]
            self._keys = (spec, ApiKeys(keys, auth.header))
        return self._keys[1]

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "name": self.name, "folder": str(self.folder), "endpoint": self.endpoint, "state": self.state,
            "version": self.serving.generation if self.serving is not None else None,
            "load_seconds": round(self.serving.load_seconds, 3) if self.serving and self.serving.load_seconds else None,
        }
        if self.error and self.state != "ready":
            info["error"] = self.error
        if self.refused is not None:
            info["refused"] = self.refused
        if self.pending is not None:
            info["loading_version"] = self.pending.generation
        info["restarts"] = self.restarts
        if self.last_exit is not None:
            info["last_exit"] = self.last_exit
        if self.restart_at is not None:
            info["restart_in_seconds"] = round(max(0.0, self.restart_at - time.monotonic()), 3)
        if self.serving is not None and self.serving.state is ChildState.READY:
            info["pid"] = self.serving.pid
            info["in_flight"] = self.serving.in_flight  # requests the router is forwarding to it
        if self.splitter is not None:
            info["splits"] = self.splitter.describe()
        if self.scales_to_zero:
            info["scale_to_zero"] = {
                "held_requests": self.held,
                "unloads_after_seconds": self.spec.autoscaling.downscale_stabilization.seconds,
                "last_cold_start_seconds": round(self.last_cold_start, 3) if self.last_cold_start else None,
                "last_cold_start_from": self.last_cold_start_from,
            }
        return info


class LocalServer:
    """All the APIs under one root, their route table, and the watcher that keeps them in step with the disk."""

    def __init__(self, root: Path, console: Console, base_url: str, single: bool = False,
                 liveness_period: float = 10.0):
        self.root = root.resolve()
        self.liveness_period = liveness_period  # MYELIN_LIVENESS_PERIOD: each API process's /healthz probe
        self.single = single  # the root is itself one API folder
        self.console = console
        self.base_url = base_url
        self.apis: dict[Path, LocalApi] = {}
        self.routes: dict[str, LocalApi] = {}  # endpoint -> API; replaced whole, never edited in place
        self.socket_dir = Path(tempfile.mkdtemp(prefix="myelin-local-"))
        self._retiring: set[asyncio.Task] = set()
        self._recheck: asyncio.Task | None = None
        self._reaper: asyncio.Task | None = None
        self.closing = False
        self.scale_metrics = ScaleToZeroMetrics()
        # The warm standby for APIs scaled to zero (local/standby.py): one at most, while any API scales to zero.
        self.standby: Standby | None = None
        self.standby_backoff = RestartBackoff()
        self.standby_not_before = 0.0
        unused_tls_context()  # made now, not on the way of the first API's start
        self.split_metrics = splitter.SplitMetrics()

    # ------------------------------------------------------------------ discovery
    def folders(self) -> list[Path]:
        if self.single:
            return [self.root] if (self.root / SPEC_FILE).is_file() or self.root.is_dir() else []
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))

    def folder_of(self, path: Path) -> Path | None:
        """The API folder a changed path belongs to."""
        path = Path(path)
        if self.single:
            return self.root
        try:
            rel = path.resolve().relative_to(self.root)
        except ValueError:
            return None
        return self.root / rel.parts[0] if rel.parts else None

    async def start_all(self) -> None:
        found = [f for f in self.folders() if (f / SPEC_FILE).is_file() or (f / "api.yml").is_file()]
        self.console.banner(len(found), str(self.root), self.base_url)
        for folder in found:
            self.schedule(folder)
        self._recheck = asyncio.create_task(self._recheck_requirements())
        self._reaper = asyncio.create_task(self._unload_idle())

    def model_folders(self) -> dict[Path, Path]:
        """Each API's local `predictor.model_uri` folder (a file's folder) -> that API's folder: `myelin local`
        watches these too, so new model files reload the API as an edit of its code does."""
        watched: dict[Path, Path] = {}
        for folder, api in self.apis.items():
            uri = api.spec.predictor.model_uri if api.spec is not None and hasattr(api.spec, "predictor") else None
            if not uri:
                continue
            try:
                parsed = parse_model_uri(uri)
            except ValueError:
                continue
            if parsed.is_s3:
                continue
            path = parsed.local_dir(folder).resolve()
            watched[path if not path.is_file() else path.parent] = folder
        return watched

    def api_folders_of(self, path: str | Path) -> set[Path]:
        """The API folders a changed file belongs to: the one it is in, and those whose local model folder holds it."""
        path = Path(path).resolve()
        owners = {api for model, api in self.model_folders().items() if path == model or model in path.parents}
        folder = self.folder_of(path)
        if folder is not None and (folder in self.apis or not owners):
            owners.add(folder)
        return owners

    def rescan(self) -> None:
        """Schedule folders that gained an api.yaml and APIs whose folder or api.yaml is gone, if no event said so."""
        for folder in self.folders():
            if folder not in self.apis and ((folder / SPEC_FILE).is_file() or (folder / "api.yml").is_file()):
                self.schedule(folder)
        for folder, api in list(self.apis.items()):
            if api.task is not None and not api.task.done():
                continue
            if not (folder.is_dir() and ((folder / SPEC_FILE).is_file() or (folder / "api.yml").is_file())):
                self.schedule(folder)  # gone
            elif api.state == "failed" and _newest_change(folder) > api.synced_at:
                self.schedule(folder)  # refused, and a file changed since without an event

    # ------------------------------------------------------------------ changes
    def schedule(self, folder: Path) -> None:
        """(Re)consider a folder; a newer change supersedes a sync still running for it."""
        if self.closing:
            return
        api = self.apis.get(folder)
        if api is None:
            if not folder.exists():
                return
            api = self.apis[folder] = LocalApi(folder)
        if api.task is not None and not api.task.done():
            api.task.cancel()
        api.task = asyncio.create_task(self._sync(api))

    async def _sync(self, api: LocalApi) -> None:
        pending: ApiProcess | None = None
        api.synced_at = time.time()
        try:
            if not api.folder.is_dir() or not ((api.folder / SPEC_FILE).is_file() or (api.folder / "api.yml").is_file()):
                await self._remove(api)
                return
            spec = self._read_spec(api)
            if spec is None:
                return
            if splitter.is_splitter(spec):
                splitter.serve(self, api, spec)  # routing only: no process, no requirements
                return
            missing = requirements.unmet(api.folder)
            api.blocked_on_requirements = bool(missing)
            if missing:
                self._refuse(api, spec.name, requirements.message(api.folder, missing))
                return
            if api.scales_to_zero and api.serving is None:
                self._idle(api, spec)  # loaded by its first request
                return
            api.generation += 1
            pending = self._process(api, spec, api.generation)
            api.pending = pending
            self.console.loading(spec.name, api.generation)
            ok = await pending.start()
            api.pending = None
            if not ok:
                if api.serving is None:
                    api.restart_at = None  # its process had ended: the new version cannot start either
                self._refuse(api, spec.name, pending.error or "failed to load", pending.traceback)
                await pending.stop(0)
                return
            self._switch(api, spec, pending)
            pending = None
        except asyncio.CancelledError:
            if pending is not None:  # superseded by a newer edit: this version never serves
                api.pending = None
                pending.kill_now()
                await asyncio.shield(pending.stop(0))
            raise

    def _process(self, api: LocalApi, spec: ApiSpec, generation: int, restart: int = 0) -> ApiProcess:
        return ApiProcess(spec.name, api.folder, generation, self.socket_dir, self._child_stdout, self._child_stderr,
                          endpoint=spec.endpoint, max_body=spec.serving.max_body_bytes,
                          env=ARRIVAL_ENV if api.scales_to_zero else None, on_exit=self._exited, restart=restart,
                          liveness_period=self.liveness_period)

    # ------------------------------------------------------------------ supervision
    def _exited(self, child: ApiProcess, code: int) -> None:
        """The serving process of an API ended on its own: say so at once, and start it again after the
        back-off (an API scaled to zero goes back to idle: its next request starts it, after the back-off)."""
        api = next((a for a in self.apis.values() if a.serving is child), None)
        if api is None or self.closing or api.spec is None:
            return  # not serving any more (retired, removed): nothing to restart
        now = time.monotonic()
        ran = now - api.backoff.running_since if api.backoff.running_since is not None else None
        delay = api.backoff.ended(now)
        how = describe_exit(code, child.killed_for)
        api.last_exit = {"how": how, "code": code, "at": time.strftime("%H:%M:%S"),
                         "ran_seconds": round(ran, 3) if ran is not None else None}
        api.last_load = child.load_seconds
        api.serving = None
        self._retire(child, 0)  # its pipes, client and socket file
        if api.scales_to_zero:
            api.not_before = now + delay
            self.console.exited(api.name, how, api.restarts, delay, scaled_to_zero=True)
            return
        api.restart_at = now + delay
        self.console.exited(api.name, how, api.restarts, delay)
        if api.task is not None and not api.task.done():
            return  # a newer version is loading: it takes over when ready
        api.task = asyncio.create_task(self._restart(api, child.generation))

    async def _restart(self, api: LocalApi, generation: int) -> None:
        """Start the API's process again, after its back-off; again (longer back-off) if that one fails too."""
        pending: ApiProcess | None = None
        try:
            while True:
                assert api.restart_at is not None and api.spec is not None
                await asyncio.sleep(max(0.0, api.restart_at - time.monotonic()))
                spec = api.spec
                api.restarts += 1
                pending = self._process(api, spec, generation, restart=api.restarts)
                api.pending = pending
                self.console.restarting(spec.name, api.restarts)
                ok = await pending.start()
                api.pending = None
                if ok:
                    self._switch(api, spec, pending, restarted=True)
                    pending = None
                    return
                failed, pending = pending, None
                await failed.stop(0)
                api.last_exit = {"how": f"failed to start again: {failed.error or 'failed to load'}",
                                 "code": failed.returncode, "at": time.strftime("%H:%M:%S")}
                api.restart_at = time.monotonic() + api.backoff.ended(time.monotonic())
                self.console.failed(spec.name, failed.error or "failed to load", failed.traceback)
        except asyncio.CancelledError:
            if pending is not None:  # a newer edit or a removal took over
                api.pending = None
                pending.kill_now()
                await asyncio.shield(pending.stop(0))
            raise

    def _idle(self, api: LocalApi, spec: ApiSpec) -> None:
        api.splitter = None
        api.error = api.traceback = api.refused = None
        routes = {endpoint: a for endpoint, a in self.routes.items() if a is not api}
        routes[spec.endpoint] = api
        self.routes = routes
        self.scale_metrics.register(spec.name)
        self.console.idle(spec.name, f"{self.base_url}{spec.endpoint}")

    # ------------------------------------------------------------------ scale to zero
    async def wake(self, api: LocalApi, remaining: float) -> ApiProcess | None:
        """Hold a request for an API scaled to zero until it is ready (its child, or None when it failed to load).

        The first request starts the cold start; requests arriving meanwhile wait for the same one. Raises
        TimeoutError when `remaining` (what is left of the request's serving.timeout) runs out first; the cold
        start goes on for the requests after it."""
        if api.waking is None or api.waking.done():
            api.wake_started = time.monotonic()
            api.waking = asyncio.create_task(self._cold_start(api))
        api.held += 1
        self.scale_metrics.held(api.name, api.held)
        try:
            return await asyncio.wait_for(asyncio.shield(api.waking), max(remaining, 0.0))
        finally:
            api.held -= 1
            self.scale_metrics.held(api.name, api.held)

    async def _cold_start(self, api: LocalApi) -> ApiProcess | None:
        spec = api.spec
        assert spec is not None
        child: ApiProcess | None = None
        try:
            # After its process ended on its own, the next start waits for the back-off (the request is held
            # meanwhile, within its serving.timeout).
            await asyncio.sleep(max(0.0, api.not_before - time.monotonic()))
            api.generation += 1
            child = self._process(api, spec, api.generation)
            standby = self._take_standby(child)
            self.console.waking(spec.name, standby=standby.pid if standby is not None else None)
            ok = await child.start(standby=standby)
        except asyncio.CancelledError:  # the folder went away or myelin local stops
            if child is not None:
                child.kill_now()
                await asyncio.shield(child.stop(0))
            raise
        finally:
            self.standby_not_before = max(self.standby_not_before, time.monotonic() + STANDBY_QUIET_S)
        api.last_cold_start_from = "standby" if child.from_standby else "new process"
        took = time.monotonic() - api.wake_started
        if not ok:
            self._refuse(api, spec.name, child.error or "failed to load", child.traceback)
            await child.stop(0)
            return None
        api.last_cold_start = took
        api.last_active = time.monotonic()
        self.scale_metrics.cold_start(api.name, took)
        self._switch(api, spec, child, cold_start=took)
        return child

    def _take_standby(self, child: ApiProcess) -> Standby | None:
        """The warm standby, if one is ready to become `child` (same interpreter environment and folder); it is
        then no longer the standby. One that would not fit (`myelin local`'s environment changed) is replaced."""
        standby = self.standby
        if standby is None or not standby.ready or not standby.alive:
            return None
        self.standby = None
        if standby.usable_for(child.environment(), os.getcwd()):
            self.standby_backoff.started(time.monotonic())  # it served its purpose: not a crash loop
            return standby
        self._stop_standby(standby)
        return None

    def _keep_standby(self) -> None:
        """One warm standby while any API scales to zero, none otherwise; started when nothing loads (a wake, a
        version) and STANDBY_QUIET_S after the last did, and again after one ended on its own (back-off)."""
        wanted = not self.closing and any(a.scales_to_zero and a.splitter is None for a in self.apis.values())
        standby = self.standby
        if not wanted:
            if standby is not None:
                self.standby = None
                self._stop_standby(standby)
            return
        if standby is not None:
            return
        now = time.monotonic()
        # A process loading (a version, a restart, a wake); not an API waiting out its back-off, which may last.
        busy = any(a.pending is not None or (a.waking is not None and not a.waking.done()) for a in self.apis.values())
        if busy:
            self.standby_not_before = max(self.standby_not_before, now + STANDBY_QUIET_S)
            return
        if now < self.standby_not_before:
            return
        standby = Standby(ApiProcess.base_environment(), os.getcwd(), self._standby_stderr, self._standby_exited)
        self.standby = standby
        task = asyncio.create_task(self._start_standby(standby))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _start_standby(self, standby: Standby) -> None:
        try:
            await standby.start()
        except OSError as err:  # the interpreter cannot be started: say so, retry after the back-off
            self.console.note(f"the warm standby for APIs scaled to zero could not start: {err}", level="warning")
            self._standby_exited(standby)
            return
        self.standby_backoff.started(time.monotonic())
        if await standby.wait_ready() and self.standby is standby:
            self.console.standby_ready(standby.pid, standby.ready_seconds)

    def _standby_exited(self, standby: Standby) -> None:
        """The standby ended on its own (killed, crashed, an import failed): a new one after the back-off."""
        if self.standby is not standby:
            return
        self.standby = None
        now = time.monotonic()
        self.standby_not_before = max(self.standby_not_before, now + self.standby_backoff.ended(now))
        if not standby.ready and standby.tail and not self.closing:
            self.console.note(f"the warm standby for APIs scaled to zero failed: {standby.tail[-1]}", level="warning")

    def _standby_stderr(self, line: str) -> None:
        self.console.child_output("standby", line)

    def _stop_standby(self, standby: Standby) -> None:
        task = asyncio.create_task(standby.stop())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def describe_standby(self) -> dict[str, Any] | None:
        return self.standby.describe() if self.standby is not None else None

    def retry_after(self, api: LocalApi) -> int:
        """Seconds until the cold start under way should be done, from the last one (5 before any); clamped to
        [1, contract.MAX_RETRY_AFTER_S]."""
        if api.last_cold_start is None:
            return retry_after_seconds(max(5, api.retry_after()))
        return retry_after_seconds(api.last_cold_start - (time.monotonic() - api.wake_started))

    async def _unload_idle(self) -> None:
        """APIs scaled to zero give their process (and its memory) back after downscale_stabilization idle."""
        while True:
            await asyncio.sleep(UNLOAD_CHECK_S)
            self._keep_standby()
            now = time.monotonic()
            for api in list(self.apis.values()):
                child = api.serving
                if (not api.scales_to_zero or child is None or child.in_flight or api.held
                        or (api.task is not None and not api.task.done())):
                    continue
                idle = now - api.last_active
                if idle >= api.spec.autoscaling.downscale_stabilization.seconds:
                    api.serving = None
                    self.console.unloaded(api.name, idle)
                    self._retire(child, api.spec.serving.drain_timeout.seconds)

    def _read_spec(self, api: LocalApi) -> ApiSpec | None:
        folder = api.folder
        if not (folder / SPEC_FILE).is_file() and (folder / "api.yml").is_file():
            self._refuse(api, folder.name, f"{folder / 'api.yml'}: the spec file must be named {SPEC_FILE} "
                                           f"(did you mean {folder / SPEC_FILE}?)")
            return None
        try:
            spec = load_api_spec(folder)
        except SpecError as err:
            api.guessed_endpoint = _guess_endpoint(folder)
            self._refuse(api, api.name, str(err))
            return None
        for other in self.apis.values():
            if other is api or other.spec is None or other.state == "stopped":
                continue
            if other.spec.name == spec.name:
                self._refuse(api, spec.name, f"{folder / SPEC_FILE}: name: {spec.name!r} is already used by {other.folder}")
                return None
            if other.endpoint == spec.endpoint:
                self._refuse(api, spec.name, f"{folder / SPEC_FILE}: networking.endpoint: {spec.endpoint} is already "
                                             f"served by {other.folder}")
                return None
        api.spec = spec
        return spec

    def _refuse(self, api: LocalApi, name: str, error: str, traceback: str | None = None) -> None:
        keeps = (api.serving is not None and api.serving.state is ChildState.READY) or api.splitter is not None
        api.error = error
        api.traceback = traceback
        if keeps:
            api.refused = {"version": api.generation, "error": error, "at": time.strftime("%H:%M:%S")}
        self.console.failed(name, error, traceback, keeps_serving=keeps)

    def _switch(self, api: LocalApi, spec: ApiSpec, new: ApiProcess, cold_start: float | None = None,
                restarted: bool = False) -> None:
        old = api.serving
        api.serving = new
        api.splitter = None
        api.restart_at = None
        api.backoff.started(time.monotonic())
        api.error = api.traceback = api.refused = None
        routes = {endpoint: a for endpoint, a in self.routes.items() if a is not api}
        routes[spec.endpoint] = api  # an endpoint that moved: the old path is gone from this line on (404)
        self.routes = routes
        self.console.ready(spec.name, f"{self.base_url}{spec.endpoint}", new.load_seconds, new.generation,
                           cold_start=cold_start, restarts=api.restarts if restarted else None)
        if old is not None:
            self._retire(old, spec.serving.drain_timeout.seconds)

    def _retire(self, child: ApiProcess, drain_timeout: float) -> None:
        """Stop an old version once the router has finished the requests it sent it: in the background."""

        async def retire() -> None:
            # A request whose body is still coming was sent to this version: it is answered by it, however
            # slow the upload (the body timeout bounds it); the drain timeout counts from the last upload's end.
            while child.uploading and child.state is ChildState.READY:
                await asyncio.sleep(0.05)
            deadline = time.monotonic() + drain_timeout
            while child.in_flight and time.monotonic() < deadline and child.state is ChildState.READY:
                await asyncio.sleep(0.02)
            await child.stop(drain_timeout)

        task = asyncio.create_task(retire())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _remove(self, api: LocalApi) -> None:
        self.apis.pop(api.folder, None)
        api.restart_at = None
        if api.waking is not None and not api.waking.done():
            api.waking.cancel()
        endpoint = api.endpoint or api.guessed_endpoint
        self.routes = {e: a for e, a in self.routes.items() if a is not api}
        if api.serving is not None or api.spec is not None or api.error:
            # Said also for a folder that never served (its api.yaml refused): the console and the page listed it.
            self.console.removed(api.name, endpoint or "")
        if api.serving is not None:
            self._retire(api.serving, api.spec.serving.drain_timeout.seconds if api.spec else 5.0)
            api.serving = None

    async def _recheck_requirements(self) -> None:
        """APIs waiting for packages start by themselves once the packages are installed."""
        while True:
            await asyncio.sleep(REQUIREMENTS_RECHECK_S)
            for api in list(self.apis.values()):
                if api.blocked_on_requirements and not requirements.unmet(api.folder):
                    self.schedule(api.folder)

    # ------------------------------------------------------------------ children's output
    def _child_stdout(self, child: ApiProcess, line: bytes) -> None:
        if b'"predictor failed to load"' in line:
            with contextlib.suppress(orjson.JSONDecodeError):
                child.traceback = orjson.loads(line).get("traceback")
            if self.console.tty:
                return  # said once, with its traceback, by the router's status line
        self.console.child_log(child.name, line)

    def _child_stderr(self, child: ApiProcess, line: str) -> None:
        self.console.child_output(child.name, line)

    # ------------------------------------------------------------------ routing
    def route(self, path: str) -> LocalApi | None:
        """The API a path belongs to: the longest endpoint that is the path or a prefix of it at a `/` (an API
        at /a and an AsyncAPI at /a/b: GET /a/b/<id> is /a/b's). Serving endpoints (the route table) and the
        endpoints of APIs not serving (loading, failed, restarting: they answer 503, not 404) are matched
        together, so a longer endpoint wins whatever its state and whichever reloaded last."""
        best: LocalApi | None = None
        best_len = -1
        for endpoint, api in self._endpoints():
            if len(endpoint) > best_len and (path == endpoint or path.startswith(endpoint + "/")):
                best, best_len = api, len(endpoint)
        return best

    def _endpoints(self) -> list[tuple[str, LocalApi]]:
        routes = self.routes
        pairs = list(routes.items())
        for api in self.apis.values():
            endpoint = api.spec.endpoint if api.spec is not None else api.guessed_endpoint
            if endpoint and endpoint not in routes:
                pairs.append((endpoint, api))
        return pairs

    @property
    def ready(self) -> bool:
        """At least one API serves, or can (one scaled to zero loads on its first request)."""
        return any(a.state in ("ready", "idle") for a in self.apis.values())

    # ------------------------------------------------------------------ shutdown
    async def close(self, drain_timeout: float) -> None:
        self.closing = True
        for task in (self._recheck, self._reaper):
            if task is not None:
                task.cancel()
        for api in self.apis.values():
            if api.waking is not None and not api.waking.done():
                api.waking.cancel()
        for api in self.apis.values():
            if api.task is not None and not api.task.done():
                api.task.cancel()
        standby, self.standby = self.standby, None
        if standby is not None:
            self._stop_standby(standby)
        children = [c for a in self.apis.values() for c in (a.serving, a.pending) if c is not None]
        await asyncio.gather(*(c.stop(drain_timeout) for c in children), return_exceptions=True)
        await asyncio.gather(*self._retiring, return_exceptions=True)
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    def kill_all(self) -> None:
        if self.standby is not None:
            self.standby.kill_now()
        for api in self.apis.values():
            for child in (api.serving, api.pending):
                if child is not None:
                    child.kill_now()
