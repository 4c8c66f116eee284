"""Which API folders `myelin local` serves, which version of each gets the traffic, and how versions change.

Every folder under the watched root is an API (`LocalApi`). Each is served by a child server (`ApiProcess`).
On any change in a folder, a new version starts beside the serving one; traffic moves to it (one route
table swap) once it is ready; the old one then finishes its in-flight requests and stops, in the background,
so a long request on an old version never holds up another API. A newer edit of the same folder supersedes a
version still loading. A version that cannot start (bad api.yaml, missing packages, a load error) is refused:
the previous one keeps serving, and `/info` and the local page say which version serves and why the other
was refused. A folder that appears is started; one that disappears stops being served (404).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from ..spec import SPEC_FILE, ApiSpec, SpecError, load_api_spec
from . import requirements
from .child import ApiProcess, ChildState
from .console import Console

REQUIREMENTS_RECHECK_S = 3.0


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
        if self.serving is not None and self.serving.state is ChildState.READY:
            return "ready"
        if self.pending is not None or (self.task is not None and not self.task.done()):
            return "loading"
        return "failed" if self.error else "stopped"

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
        return info


class LocalServer:
    """All the APIs under one root, their route table, and the watcher that keeps them in step with the disk."""

    def __init__(self, root: Path, console: Console, base_url: str, single: bool = False):
        self.root = root.resolve()
        self.single = single  # the root is itself one API folder
        self.console = console
        self.base_url = base_url
        self.apis: dict[Path, LocalApi] = {}
        self.routes: dict[str, LocalApi] = {}  # endpoint -> API; replaced whole, never edited in place
        self.socket_dir = Path(tempfile.mkdtemp(prefix="myelin-local-"))
        self._retiring: set[asyncio.Task] = set()
        self._recheck: asyncio.Task | None = None
        self.closing = False

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
        try:
            if not api.folder.is_dir() or not ((api.folder / SPEC_FILE).is_file() or (api.folder / "api.yml").is_file()):
                await self._remove(api)
                return
            spec = self._read_spec(api)
            if spec is None:
                return
            missing = requirements.unmet(api.folder)
            api.blocked_on_requirements = bool(missing)
            if missing:
                self._refuse(api, spec.name, requirements.message(api.folder, missing))
                return
            api.generation += 1
            pending = ApiProcess(spec.name, api.folder, api.generation, self.socket_dir,
                                 self._child_stdout, self._child_stderr, endpoint=spec.endpoint,
                                 max_body=spec.serving.max_body_bytes)
            api.pending = pending
            self.console.loading(spec.name, api.generation)
            ok = await pending.start()
            api.pending = None
            if not ok:
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
        keeps = api.serving is not None and api.serving.state is ChildState.READY
        api.error = error
        api.traceback = traceback
        if keeps:
            api.refused = {"version": api.generation, "error": error, "at": time.strftime("%H:%M:%S")}
        self.console.failed(name, error, traceback, keeps_serving=keeps)

    def _switch(self, api: LocalApi, spec: ApiSpec, new: ApiProcess) -> None:
        old = api.serving
        api.serving = new
        api.error = api.traceback = api.refused = None
        routes = {endpoint: a for endpoint, a in self.routes.items() if a is not api}
        routes[spec.endpoint] = api  # an endpoint that moved: the old path is gone from this line on (404)
        self.routes = routes
        self.console.ready(spec.name, f"{self.base_url}{spec.endpoint}", new.load_seconds, new.generation)
        if old is not None:
            self._retire(old, spec.serving.drain_timeout.seconds)

    def _retire(self, child: ApiProcess, drain_timeout: float) -> None:
        """Stop an old version once the router has finished the requests it sent it: in the background."""

        async def retire() -> None:
            deadline = time.monotonic() + drain_timeout
            while child.in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await child.stop(drain_timeout)

        task = asyncio.create_task(retire())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _remove(self, api: LocalApi) -> None:
        self.apis.pop(api.folder, None)
        endpoint = api.endpoint
        self.routes = {e: a for e, a in self.routes.items() if a is not api}
        if api.serving is not None or api.spec is not None:
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
        """The API serving a path: its endpoint exactly, or a path below it (e.g. GET <endpoint>/<id>)."""
        routes = self.routes
        api = routes.get(path)
        if api is not None:
            return api
        for endpoint, candidate in routes.items():
            if path.startswith(endpoint + "/"):
                return candidate
        return None

    def unserved(self, path: str) -> LocalApi | None:
        """An API that is not serving (loading, failed) whose endpoint is this path: it answers 503, not 404."""
        for api in self.apis.values():
            endpoint = api.spec.endpoint if api.spec is not None else api.guessed_endpoint
            if endpoint and (path == endpoint or path.startswith(endpoint + "/")):
                return api
        return None

    @property
    def ready(self) -> bool:
        return any(a.state == "ready" for a in self.apis.values())

    # ------------------------------------------------------------------ shutdown
    async def close(self, drain_timeout: float) -> None:
        self.closing = True
        if self._recheck is not None:
            self._recheck.cancel()
        for api in self.apis.values():
            if api.task is not None and not api.task.done():
                api.task.cancel()
        children = [c for a in self.apis.values() for c in (a.serving, a.pending) if c is not None]
        await asyncio.gather(*(c.stop(drain_timeout) for c in children), return_exceptions=True)
        await asyncio.gather(*self._retiring, return_exceptions=True)
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    def kill_all(self) -> None:
        for api in self.apis.values():
            for child in (api.serving, api.pending):
                if child is not None:
                    child.kill_now()
