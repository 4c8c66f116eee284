"""Zero-downtime reload for `myelin local`: edit a predictor or api.yaml, keep serving.

On a change the new version is loaded beside the old one; only if it loads is
traffic switched (one dict assignment on the event loop, so every request goes
to exactly one version); the old version then finishes its in-flight requests
and is closed. A version that fails to load is reported and the old one keeps
serving.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import TYPE_CHECKING

from .runtime import ApiRuntime, State
from .spec import SpecError, check_unique, load_api_spec

if TYPE_CHECKING:
    from .server import MyelinApp

WATCHED_SUFFIXES = (".py", ".yaml", ".yml")


def _relevant(path: str) -> bool:
    return path.endswith(WATCHED_SUFFIXES) and "__pycache__" not in path


class Reloader:
    def __init__(self, app: "MyelinApp"):
        self.app = app

    def _folders(self) -> dict[Path, ApiRuntime]:
        return {r.folder.resolve(): r for r in self.app.runtimes.values()}

    async def run(self) -> None:
        from watchfiles import awatch

        folders = list(self._folders())
        if not folders:
            return
        async for changes in awatch(*folders, debounce=200, step=50, recursive=True):
            touched = set()
            for _, path in changes:
                if not _relevant(path):
                    continue
                p = Path(path).resolve()
                for folder in self._folders():
                    if p.is_relative_to(folder):
                        touched.add(folder)
            for folder in sorted(touched):
                try:
                    await self.reload(folder)
                except Exception as err:  # noqa: BLE001 - one bad edit must not stop reloading for the session
                    self.app.log.event("error", "reload failed: keeping the previous version", folder=str(folder),
                                       error=f"{type(err).__name__}: {err}")
                    self._report(f"  ✗ {folder.name}: reload failed, previous version keeps serving: {err}")

    async def reload(self, folder: Path) -> bool:
        app = self.app
        old = self._folders().get(folder)
        if old is None:
            return False
        try:
            spec = load_api_spec(folder)
            others = {r.folder: r.spec for r in app.runtimes.values() if r is not old}
            check_unique({**others, folder: spec})
        except SpecError as err:
            app.log.event("error", "reload failed: keeping the previous version", api=old.name, error=str(err))
            self._report(f"  ✗ {old.name:<22} reload failed, previous version keeps serving: {err}")
            return False
        new = app.new_runtime(folder, spec)
        await new.start()
        if new.state is not State.READY:
            err = new.load_error
            app.log.event("error", "reload failed: keeping the previous version", api=old.name,
                          where=err.where if err else "", error=err.message if err else new.state.value)
            self._report(f"  ✗ {old.name:<22} reload failed, previous version keeps serving: {err}")
            new.close()
            return False
        # Switch: new requests reach the new version from this line on.
        routes = dict(app.runtimes)
        routes.pop(old.endpoint, None)
        routes[new.endpoint] = new
        app.runtimes = routes
        app.log.event("info", "reloaded", api=new.name, endpoint=new.endpoint)
        if app.on_loaded is not None:
            app.on_loaded(new)
        await old.drained(old.spec.serving.drain_timeout.seconds)
        old.close()
        # The first load froze the old model out of the collector's reach (server.py); let it be freed now.
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        return True

    def _report(self, line: str) -> None:
        import sys

        print(line, file=sys.stderr, flush=True)
