"""The warm standby of `myelin local`: a `myelin serve` process started ahead of need, waiting for its API.

`python -m myelin.standby` imports what every `myelin serve` imports before it loads its predictor (the server,
FastAPI, pydantic, uvicorn and its uvloop/httptools parts, Prometheus' client, the protocol adapters and with them
numpy), compiles `myelin.cli`, collects and freezes its garbage as `myelin serve` does once loaded, looks up where
its modules' files are (the loader's check for modules of the API folder), says so with one line on stderr
(`READY_LINE`), then blocks reading one JSON line on stdin: its assignment, `{"argv": [...], "env": {...},
"cwd": "..."}`, the exact argv, environment and working folder `myelin local` would have given a new process
(`local/child.py`). It then becomes that process: stdin is /dev/null again, the environment is replaced in place
(`os.environ` keeps its identity, so everything that holds it sees the new values), the working folder and
`sys.argv` are set, and `myelin.cli`'s code (compiled ahead) runs as the module `__main__`, as
`python -m myelin.cli ...` runs it (same `sys.argv[0]`, same `__main__.__spec__`, `__file__` and `__package__`;
`serving.processes`' spawned workers import `__main__` by that spec's name). Nothing it imported reads the
environment at import time in a way the assignment could change: the settings, the API keys, the cost stack,
`PROMETHEUS_MULTIPROC_DIR` and the log streams are all read when `myelin serve` runs, after the assignment; the
environment the interpreter itself reads at its start (PYTHON*, LD_*, locale) is checked by `myelin local`,
which uses a standby only when the assignment changes nothing but MYELIN_* variables (`local/standby.py`).

What is deliberately NOT imported ahead: the predictor and the packages only it imports (torch, sklearn ...).
The runtime applies `predictor.env` before importing the predictor, and libraries such as OpenMP read their
thread settings when they load: imported early, they would miss them. (numpy is imported by every `myelin
serve` when it builds its app, before `predictor.env` is applied: ahead here, it is no different.) An empty
stdin (`myelin local` ended or gave the standby up) ends the process with code 0 and no output.
"""

from __future__ import annotations

import builtins
import gc
import os
import sys
import types
from importlib.machinery import ModuleSpec
from types import CodeType

#: The line on stderr that says the standby has imported the runtime and waits for its assignment.
READY_LINE = "myelin: standby ready"
#: The line on stderr that says it has read its assignment (from here on it runs the API's `myelin serve`).
ASSIGNED_LINE = "myelin: standby assigned"


def _preload() -> None:
    """Import what `myelin serve` imports before it reads the API folder (cli.py's serve path, uvicorn's
    Config.load for loop="uvloop" and the runtime's httptools protocol)."""
    import argparse  # noqa: F401  (myelin.cli, run as __main__ after the assignment)

    import myelin.contract  # noqa: F401
    import myelin.logs  # noqa: F401
    import myelin.process  # noqa: F401
    import myelin.protection  # noqa: F401
    import myelin.protocol_oip  # noqa: F401  (MyelinApp builds its protocol routes: numpy comes with them)
    import myelin.protocol_openai  # noqa: F401
    import myelin.server  # noqa: F401
    import myelin.settings  # noqa: F401
    import myelin.spec  # noqa: F401
    import fastapi.staticfiles  # noqa: F401  (the docs' assets)
    import fastapi_offline  # noqa: F401
    import uvicorn.lifespan.on  # noqa: F401
    import uvicorn.protocols.http.httptools_impl  # noqa: F401
    import uvicorn.protocols.websockets.auto  # noqa: F401

    try:
        import uvicorn.loops.uvloop  # noqa: F401
        import uvloop  # noqa: F401
    except ImportError:  # uvicorn falls back the same way when it loads its config
        pass

    from myelin.loader import remember_module_files

    remember_module_files()  # the loader's look-up of which modules came from the API folder, done ahead


def _main_code() -> tuple[ModuleSpec, CodeType]:
    """myelin.cli's spec and code, read (and compiled, without a bytecode cache) ahead."""
    import importlib.util

    spec = importlib.util.find_spec("myelin.cli")
    assert spec is not None and spec.loader is not None and spec.origin is not None
    code = spec.loader.get_code("myelin.cli")  # type: ignore[attr-defined]
    return spec, code


def _read_assignment() -> dict | None:
    """One JSON line on fd 0 (unbuffered reads: nothing beyond the line is consumed); None on end of file."""
    import json

    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(0, 65536)
        if not chunk:
            return None
        data += chunk
    return json.loads(data)


def _become(assignment: dict, spec: ModuleSpec, code: CodeType) -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # as a new process gets it (stdin=DEVNULL)
    os.close(devnull)
    os.chdir(assignment["cwd"])
    os.environ.clear()
    os.environ.update(assignment["env"])
    # As `python -m myelin.cli ARGV...` runs it (runpy): argv[0] the module's file, and the code run as the
    # module __main__ with myelin.cli's spec, file and package.
    sys.argv = [spec.origin, *assignment["argv"]]
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=spec.origin, __cached__=spec.cached, __loader__=spec.loader,
                         __package__=spec.parent, __spec__=spec, __builtins__=builtins)
    sys.modules["__main__"] = main
    exec(code, main.__dict__)


def main() -> int:
    _preload()
    spec, code = _main_code()
    # What `myelin serve` does once its predictor has loaded (server.py), done here for what is already
    # loaded: its full collection then scans only what the assignment adds (tens of ms less on the way to ready).
    gc.collect()
    gc.freeze()
    print(f"{READY_LINE} (pid {os.getpid()})", file=sys.stderr, flush=True)
    assignment = _read_assignment()
    if assignment is None:
        return 0
    print(ASSIGNED_LINE, file=sys.stderr, flush=True)
    _become(assignment, spec, code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
