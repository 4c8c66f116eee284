"""`myelin local`: every API under a folder (or one API folder) on one local port, each in its own process.

The router (router.py) listens on the port; each API runs in a `myelin serve` process of its own (child.py),
as it does in its container in the cluster: its own modules, its own `predictor.env`, its own
`serving.processes`. The manager (manager.py) keeps those processes in step with the folders on disk.
"""

from __future__ import annotations

from pathlib import Path

from ..process import PortInUse, bind, run_app
from ..settings import Settings
from ..spec import SPEC_FILE
from .console import Console
from .manager import LocalServer
from .router import LocalRouter

#: How long `myelin local` gives its APIs to finish in-flight requests when it stops (Ctrl-C, SIGTERM).
DRAIN_TIMEOUT_S = 10.0


def serve_local(apis: str, host: str, port: int, settings: Settings, reload: bool = True) -> int:
    root = Path(apis)
    console = Console()
    if not root.exists():
        console.note(f"{root.resolve()}: no such folder (give a folder of API folders, or one API folder)",
                     level="error")
        return 2
    single = (root / SPEC_FILE).is_file()
    try:
        sock = bind(host, port)  # the port first: a busy port is the first and only error
    except PortInUse as err:
        console.note(str(err), level="error")
        return 2
    base = f"http://{host}:{sock.getsockname()[1]}"
    server = LocalServer(root, console, base, single=single, liveness_period=settings.liveness_period)
    router = LocalRouter(server, watch=reload)
    try:
        run_app(router, host, port, DRAIN_TIMEOUT_S, settings, sockets=[sock])
    finally:
        server.kill_all()
    return 0
