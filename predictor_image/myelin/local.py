"""`myelin local`: every API under a folder, one port, one process, reloaded on edit."""

from __future__ import annotations

import sys
from pathlib import Path

from .spec import load_specs
from .logs import RequestLog
from .process import run_app
from .runtime import ApiRuntime, State
from .settings import Settings


def _status_line(runtime: ApiRuntime, base: str) -> str:
    if runtime.state is State.READY:
        return f"  ✓ {runtime.name:<22} {base}{runtime.endpoint}"
    err = runtime.load_error
    return f"  ✗ {runtime.name:<22} failed to load: {err.where}: {err.message}" if err else f"  ? {runtime.name} {runtime.state.value}"


def serve_local(apis: str, host: str, port: int, settings: Settings, reload: bool = True) -> int:
    from .server import MyelinApp

    specs, errors = load_specs([apis])
    base = f"http://{host}:{port}"
    print(f"myelin local: serving {len(specs)} API(s) from {Path(apis).resolve()} at {base}", file=sys.stderr, flush=True)
    for err in errors:
        print(f"  ✗ {err}", file=sys.stderr, flush=True)
    if not specs:
        print("myelin local: nothing to serve", file=sys.stderr)
        return 2

    def report(runtime: ApiRuntime) -> None:
        print(_status_line(runtime, base), file=sys.stderr, flush=True)

    app = MyelinApp(list(specs.items()), processes=1, log=RequestLog(), on_loaded=report, watch=reload, settings=settings)
    drain = max(spec.serving.drain_timeout.seconds for spec in specs.values())
    run_app(app, host, port, drain, settings)
    return 0
