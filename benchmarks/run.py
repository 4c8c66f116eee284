#!/usr/bin/env python3
"""Myelin's serving benchmark: one command installs what it needs, runs every server, writes the results.

    python3 benchmarks/run.py                          # full run: results in benchmarks/results/
    python3 benchmarks/run.py --quick                  # smoke check (short runs, results in .work/quick/)
    python3 benchmarks/run.py --quick --only ceiling,fastapi
    python3 benchmarks/run.py --list                   # the servers and groups

Each server is started by this script pinned to core 0 (`taskset -c 0`), waited for on its
health route, checked for the right answers, warmed up, then loaded by wrk pinned to core 1
(`taskset -c 1 wrk -t1 -c<N> -d<S>s -s post.lua --latency`) several times per concurrency.
Every server process is stopped by pid (its process group: SIGTERM, wait, SIGKILL) in a
`finally`, also when a step fails. Only 127.0.0.1 is used. This file needs only the standard
library; the servers run in their own virtualenvs, the plot in benchmarks/.venvs/tools.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / ".work"
VENVS = BENCH / ".venvs"
MAIN_VENV = ROOT / ".venv"
MAIN_PY = MAIN_VENV / "bin" / "python"
MYELIN = MAIN_VENV / "bin" / "myelin"
LUA = BENCH / "post.lua"
HOST = "127.0.0.1"
SERVER_CPU = "0"
LOAD_CPU = "1"

# Peer virtualenvs: name -> (requirements file, distribution whose version is reported).
PEER_VENVS = {
    "kserve": ("requirements-kserve.txt", "kserve"),
    "mlserver": ("requirements-mlserver.txt", "mlserver"),
    "bentoml": ("requirements-bentoml.txt", "bentoml"),
    "tools": ("requirements-tools.txt", "matplotlib"),
}

# Same thread budget for every server: each has one core.
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}

EMBED_TEXT = "Myelin serves Python predictors as autoscaling web APIs, one core at a time."


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- setup


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    log("installing wrk (apt-get)")
    subprocess.run(["apt-get", "update"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, stdout=subprocess.DEVNULL)


def ensure_venv(name: str) -> Path:
    """Create benchmarks/.venvs/<name> and install its pinned requirements (skipped when unchanged)."""
    req = BENCH / PEER_VENVS[name][0]
    venv = VENVS / name
    stamp = venv / ".bench-requirements.sha256"
    if stamp.is_file() and stamp.read_text().strip() == sha256(req) and (venv / "bin" / "python").exists():
        return venv
    log(f"installing {name} into {venv.relative_to(ROOT)} from {req.name} (a few minutes the first time)")
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    logf = WORK / "logs" / f"install-{name}.log"
    logf.parent.mkdir(parents=True, exist_ok=True)
    with open(logf, "w") as out:
        rc = subprocess.run([*pip, "-r", str(req)], stdout=out, stderr=subprocess.STDOUT).returncode
    if rc:
        raise RuntimeError(f"pip install for {name} failed (rc={rc}); see {logf}")
    stamp.write_text(sha256(req) + "\n")
    return venv


def venv_python(name: str) -> Path:
    return VENVS / name / "bin" / "python"


def dist_version(python: Path, dist: str) -> str:
    try:
        out = subprocess.run(
            [str(python), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
            capture_output=True, text=True, timeout=60,
        )
        return out.stdout.strip() or "?"
    except Exception:
        return "?"


def main_venv_json(code: str, *args: str, env: dict[str, str] | None = None) -> Any:
    """Run a snippet in the runtime's virtualenv (it has PyYAML, myelin, sklearn) and parse its JSON output.

    `env`: extra environment variables (ab.py points PYTHONPATH at one revision's predictor_image)."""
    out = subprocess.run([str(MAIN_PY), "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**os.environ, **(env or {})})
    if out.returncode:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"rc={out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


READ_API = """
import json, sys, yaml
from pathlib import Path
folder = Path(sys.argv[1])
raw = yaml.safe_load((folder / "api.yaml").read_text())
try:
    from myelin.spec import load_api_spec
    spec = load_api_spec(folder)
    endpoint = spec.endpoint
    batching = spec.batching.model_dump(mode="json") if spec.batching else None
    serving = spec.serving.model_dump(mode="json")
except ImportError:
    endpoint = (raw.get("networking") or {}).get("endpoint") or "/" + raw["name"]
    batching, serving = raw.get("batching"), raw.get("serving")
print(json.dumps({"raw": raw, "endpoint": endpoint, "batching": batching, "serving": serving}))
"""


def read_api(folder: Path, env: dict[str, str] | None = None) -> dict:
    return main_venv_json(READ_API, str(folder), env=env)


# ---------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, ctype: str = "application/json", timeout: float = 10):
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": ctype} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@dataclass
class Server:
    """One server under test. `command(port)` is run under `taskset -c 0` with `cwd`."""

    name: str
    label: str
    group: str  # kmeans | trivial | embedding
    kind: str  # myelin | baseline | peer | ceiling
    venv: str  # "main" or a key of PEER_VENVS
    command: Callable[[int], list[str]]
    path: str
    body: bytes
    content_type: str = "application/json"
    ready_path: str = "/healthz"
    parse: Callable[[Any], Any] | None = None  # response JSON -> comparable answer
    probe_body: Callable[[list[float]], bytes] | None = None
    cwd: Path = ROOT
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout: float = 120.0
    prepare: Callable[[], None] | None = None  # e.g. write config files; may raise to skip
    note: str = ""
    version: str = ""


def json_body(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class Running:
    """A started server process group; `stop()` ends it by pid."""

    def __init__(self, server: Server, port: int, logfile: Path, extra_env: dict[str, str]):
        self.server = server
        self.port = port
        self.logfile = logfile
        env = {**os.environ, **THREAD_ENV, "PYTHONUNBUFFERED": "1", **extra_env, **server.env}
        cmd = ["taskset", "-c", SERVER_CPU, *server.command(port)]
        self.out = open(logfile, "w")
        self.out.write("$ " + " ".join(cmd) + "\n")
        self.out.flush()
        self.proc = subprocess.Popen(
            cmd, cwd=server.cwd, env=env, stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def wait_ready(self) -> float:
        start = time.monotonic()
        deadline = start + self.server.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with {self.proc.returncode} before it was ready: {self.log_tail()}")
            try:
                status, _ = http("GET", self.base + self.server.ready_path, timeout=2)
                if status == 200:
                    return time.monotonic() - start
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.25)
        raise RuntimeError(f"not ready after {self.server.ready_timeout:.0f}s: {self.log_tail()}")

    def log_tail(self, lines: int = 8) -> str:
        self.out.flush()
        try:
            text = self.logfile.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        # Children that outlived their parent (same process group) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.out.close()


# ---------------------------------------------------------------- load


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of process group `pgid` (a server and its
    workers): a server's CPU per request stays meaningful when other work on the machine slows it down."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ..., utime (11), stime (12)
            total += int(fields[11]) + int(fields[12])
    return total / tick


def run_wrk(base: str, server: Server, conns: int, seconds: float, body_file: Path, pgid: int | None = None) -> dict:
    env = {
        **os.environ,
        "BENCH_PATH": server.path,
        "BENCH_BODY_FILE": str(body_file),
        "BENCH_CONTENT_TYPE": server.content_type,
    }
    cmd = [
        "taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s",
        "--timeout", "5s", "-s", str(LUA), "--latency", base,
    ]
    cpu_before = group_cpu_seconds(pgid) if pgid is not None else 0.0
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    cpu = group_cpu_seconds(pgid) - cpu_before if pgid is not None else None
    for line in out.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            r = json.loads(line[len("WRK_JSON "):])
            secs = r["duration_us"] / 1e6
            e = r["errors"]
            p = r["latency_us"]["percentiles"]
            return {
                "rps": r["requests"] / secs if secs else 0.0,
                "requests": r["requests"],
                "p50_ms": p["50"] / 1000,
                "p99_ms": p["99"] / 1000,
                "max_ms": r["latency_us"]["max"] / 1000,
                "non2xx": e["status"],
                "socket_errors": e["connect"] + e["read"] + e["write"] + e["timeout"],
                "errors": e,
                # The server's CPU per answered request over the run (includes wrk's connection set-up, a few ms).
                "cpu_us": cpu / r["requests"] * 1e6 if cpu is not None and r["requests"] else None,
            }
    raise RuntimeError(f"wrk gave no result (rc={out.returncode}): {out.stderr.strip()[-500:]}")


def summarize(runs: list[dict]) -> dict:
    return {
        "rps": statistics.median(r["rps"] for r in runs),
        "p50_ms": statistics.median(r["p50_ms"] for r in runs),
        "p99_ms": statistics.median(r["p99_ms"] for r in runs),
        "non2xx": sum(r["non2xx"] for r in runs),
        "socket_errors": sum(r["socket_errors"] for r in runs),
        "requests": sum(r["requests"] for r in runs),
        "runs": runs,
    }


# ---------------------------------------------------------------- server catalogue


def catalogue(kmeans_api: dict | None, embed_api: dict | None) -> list[Server]:
    py = str(MAIN_PY)
    uvicorn = UVICORN
    point = POINT
    myelin_serve_extra = myelin_host_flag()

    def myelin(folder: Path | Callable[[], Path]):
        def cmd(port: int) -> list[str]:
            f = folder() if callable(folder) else folder
            return [str(MYELIN), "serve", str(f), "--port", str(port), *myelin_serve_extra]

        return cmd

    kb = kmeans_api["batching"] if kmeans_api and kmeans_api.get("batching") else {"max_batch_size": 64, "max_batch_delay": "2ms"}
    batch_size = int(kb["max_batch_size"])
    batch_delay_s = parse_seconds(kb.get("max_batch_delay", "5ms"))

    features = lambda p: json_body({"features": p})  # noqa: E731
    cluster = lambda j: j["cluster"]  # noqa: E731
    servers = [
        Server(
            "myelin", "Myelin (batching on)", "kmeans", "myelin", "main",
            myelin(ROOT / "apis" / "kmeans"), kmeans_api["endpoint"] if kmeans_api else "/kmeans",
            features(point), ready_path="/readyz", parse=cluster, probe_body=features,
        ),
        Server(
            "fastapi", "FastAPI + sklearn predict", "kmeans", "baseline", "main",
            lambda port: [*uvicorn, "--port", str(port), "--no-access-log", "benchmarks.servers.fastapi_kmeans:app"],
            "/predict", features(point), parse=cluster, probe_body=features,
        ),
        Server(
            "kserve", "KServe ModelServer", "kmeans", "peer", "kserve",
            lambda port: [str(venv_python("kserve")), str(BENCH / "servers" / "kserve_kmeans.py"),
                          "--http_port", str(port), "--enable_grpc", "false"],
            "/v1/models/kmeans:predict", json_body({"instances": [point]}),
            ready_path="/v1/models/kmeans", parse=lambda j: j["predictions"][0]["cluster"],
            probe_body=lambda p: json_body({"instances": [p]}),
            note='v1 protocol: `{"instances": [[x, y]]}` -> `{"predictions": [{"cluster": i}]}`; no batching',
        ),
        Server(
            "mlserver", "MLServer (adaptive batching)", "kmeans", "peer", "mlserver",
            lambda port: [str(VENVS / "mlserver" / "bin" / "mlserver"), "start", str(WORK / "mlserver")],
            "/v2/models/kmeans/infer", v2_body(point), ready_path="/v2/models/kmeans/ready",
            parse=lambda j: j["outputs"][0]["data"][0], probe_body=v2_body,
            prepare=None,  # set below (needs the port)
            note=f"V2 inference protocol (FP64 [1, 2] tensor in, INT64 tensor out); mlserver_sklearn.SKLearnModel; "
            f"max_batch_size={batch_size}, max_batch_time={batch_delay_s}s",
        ),
        Server(
            "bentoml", "BentoML (adaptive batching)", "kmeans", "peer", "bentoml",
            lambda port: [str(VENVS / "bentoml" / "bin" / "bentoml"), "serve", "service:KMeans",
                          "--host", HOST, "--port", str(port)],
            "/predict", json_body({"features": [point]}), ready_path="/readyz",
            parse=lambda j: j[0], probe_body=lambda p: json_body({"features": [p]}),
            cwd=BENCH / "servers" / "bentoml_kmeans",
            env={"BENCH_MAX_BATCH_SIZE": str(batch_size), "BENTOML_HOME": str(WORK / "bentoml"),
                 "BENTOML_DO_NOT_TRACK": "True"},
            note=f'`{{"features": [[x, y]]}}` -> `[i]`; batchable=True, max_batch_size={batch_size}',
        ),
        ceiling_server(),
        Server(
            "myelin-trivial", "Myelin, trivial predictor (batching off)", "trivial", "myelin", "main",
            myelin(BENCH / "apis" / "trivial"), "/trivial", features(point), ready_path="/readyz",
        ),
        Server(
            "myelin-async", "Myelin, trivial `async def predict`", "trivial", "myelin", "main",
            myelin(BENCH / "apis" / "async-def"), "/async-def", features(point), ready_path="/readyz",
        ),
        Server(
            "fastapi-trivial", "FastAPI, trivial handler", "trivial", "baseline", "main",
            lambda port: [*uvicorn, "--port", str(port), "--no-access-log", "benchmarks.servers.fastapi_trivial:app"],
            "/predict", features(point),
        ),
        Server(
            "myelin-embed", "Myelin (batching on)", "embedding", "myelin", "main",
            myelin(ROOT / "apis" / "sentence-embedding"),
            embed_api["endpoint"] if embed_api else "/sentence-embedding", EMBED_TEXT.encode(), "text/plain",
            ready_path="/readyz", parse=lambda j: j["embedding"], probe_body=lambda _: EMBED_TEXT.encode(),
            ready_timeout=300,
        ),
        Server(
            "myelin-embed-nobatch", "Myelin (batching off)", "embedding", "myelin", "main",
            myelin(lambda: WORK / "apis" / "sentence-embedding-nobatch"),
            embed_api["endpoint"] if embed_api else "/sentence-embedding", EMBED_TEXT.encode(), "text/plain",
            ready_path="/readyz", parse=lambda j: j["embedding"], probe_body=lambda _: EMBED_TEXT.encode(),
            ready_timeout=300, prepare=lambda: make_nobatch_api(embed_api),
            note="apis/sentence-embedding with `batching` removed (generated under benchmarks/.work/apis/)",
        ),
        Server(
            "fastapi-embed", "FastAPI + model.encode", "embedding", "baseline", "main",
            lambda port: [*uvicorn, "--port", str(port), "--no-access-log", "benchmarks.servers.fastapi_embedding:app"],
            "/embed", EMBED_TEXT.encode(), "text/plain", parse=lambda j: j["embedding"],
            probe_body=lambda _: EMBED_TEXT.encode(), ready_timeout=300,
        ),
    ]
    for s in servers:
        if s.name == "mlserver":
            s.mlserver_batch = (batch_size, batch_delay_s)  # type: ignore[attr-defined]
    return servers


UVICORN = [str(MAIN_PY), "-m", "uvicorn", "--host", HOST, "--workers", "1", "--loop", "uvloop", "--http", "httptools"]
POINT = [1.5, -2.25]


def ceiling_server() -> Server:
    """The raw ASGI app on the same uvicorn: what any server on this machine pays at least (also ab.py's)."""
    return Server(
        "ceiling", "Ceiling: raw ASGI constant", "kmeans", "ceiling", "main",
        lambda port: [*UVICORN, "--port", str(port), "--no-access-log", "benchmarks.servers.ceiling:app"],
        "/predict", json_body({"features": POINT}), ready_path="/healthz",
    )


def myelin_host_flag(env: dict[str, str] | None = None) -> list[str]:
    """Pass --host 127.0.0.1 when `myelin serve` has the option (it should default to loopback anyway)."""
    if not MYELIN.exists():
        return []
    try:
        out = subprocess.run([str(MAIN_PY), "-m", "myelin", "serve", "--help"], capture_output=True, text=True,
                             timeout=60, cwd=ROOT, env={**os.environ, **(env or {})})
        return ["--host", HOST] if "--host" in out.stdout else []
    except Exception:
        return []


def parse_seconds(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    v = str(value).strip()
    for unit, mult in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if v.endswith(unit):
            return float(v[: -len(unit)]) * mult
    return float(v)


def v2_body(point: list[float]) -> bytes:
    return json_body({"inputs": [{"name": "features", "shape": [1, 2], "datatype": "FP64", "data": point}]})


def write_mlserver_config(port: int, batch: tuple[int, float]) -> None:
    """An MLServer model repository: settings.json (ports, loopback) + kmeans/model-settings.json."""
    folder = WORK / "mlserver"
    model_dir = folder / "kmeans"
    model_dir.mkdir(parents=True, exist_ok=True)
    model_file = subprocess.run(
        [str(venv_python("mlserver")), str(BENCH / "kmeans_model.py")],
        capture_output=True, text=True, check=True, env={**os.environ}, timeout=300,
    ).stdout.strip().splitlines()[-1]
    settings = {
        "debug": False,
        "host": HOST,
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        # Inference in the server process itself: with one core, a separate worker process
        # only adds IPC (MLServer's default is 1 worker process).
        "parallel_workers": 0,
    }
    model_settings = {
        "name": "kmeans",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "max_batch_size": batch[0],
        "max_batch_time": batch[1],
        "parameters": {"uri": model_file, "version": "v1"},
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))


def make_nobatch_api(embed_api: dict | None) -> None:
    """A copy of apis/sentence-embedding with `batching` removed: the same files linked, api.yaml rewritten."""
    if embed_api is None:
        raise RuntimeError("apis/sentence-embedding is missing")
    src = ROOT / "apis" / "sentence-embedding"
    dst = WORK / "apis" / "sentence-embedding-nobatch"
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for entry in src.iterdir():
        if entry.name != "api.yaml" and not entry.name.startswith("."):
            (dst / entry.name).symlink_to(entry)
    spec = dict(embed_api["raw"])
    spec.pop("batching", None)
    (dst / "api.yaml").write_text("# generated by benchmarks/run.py: apis/sentence-embedding without batching\n"
                                  + json.dumps(spec, indent=2) + "\n")


# ---------------------------------------------------------------- one server


def bench_server(server: Server, args, expected: Any, concurrencies: list[int], extra_env: dict) -> dict:
    result: dict[str, Any] = {"name": server.name, "label": server.label, "group": server.group,
                              "kind": server.kind, "path": server.path, "note": server.note,
                              "version": server.version, "levels": {}}
    port = free_port()
    if server.name == "mlserver":
        write_mlserver_config(port, server.mlserver_batch)  # type: ignore[attr-defined]
    if server.prepare:
        server.prepare()
    logfile = WORK / "logs" / f"{server.name}.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    body_file = WORK / f"body-{server.name}.bin"
    body_file.write_bytes(server.body)
    log(f"{server.name}: starting on port {port} (log: {logfile.relative_to(ROOT)})")
    running = Running(server, port, logfile, extra_env)
    try:
        result["startup_s"] = round(running.wait_ready(), 2)
        status, resp = http("POST", running.base + server.path, server.body, server.content_type)
        result["sample_response"] = resp[:200].decode(errors="replace") + ("..." if len(resp) > 200 else "")
        if status != 200:
            raise RuntimeError(f"sample request answered {status}: {result['sample_response']}")
        if server.parse and server.probe_body and (expected is not None or server.group != "kmeans"):
            answers = []
            for p in (expected["points"] if server.group == "kmeans" else [None]):
                st, body = http("POST", running.base + server.path, server.probe_body(p), server.content_type)
                answers.append(server.parse(json.loads(body)) if st == 200 else f"HTTP {st}")
            result["answers"] = answers
        if args.warmup > 0:
            run_wrk(running.base, server, max(concurrencies), args.warmup, body_file)
        for conns in concurrencies:
            runs = [run_wrk(running.base, server, conns, args.duration, body_file) for _ in range(args.runs)]
            result["levels"][str(conns)] = summarize(runs)
            s = result["levels"][str(conns)]
            log(f"{server.name}: c={conns:<4} {s['rps']:>9.0f} req/s  p50 {s['p50_ms']:7.2f} ms  "
                f"p99 {s['p99_ms']:7.2f} ms  non-2xx {s['non2xx']}  socket errors {s['socket_errors']}")
        if running.proc.poll() is not None:
            raise RuntimeError(f"exited with {running.proc.returncode} during the run: {running.log_tail()}")
        if server.name in args.profile:
            result["profile"] = profile(running, server, args, body_file)
    finally:
        running.stop()
    return result


def profile(running: Running, server: Server, args, body_file: Path) -> str:
    """One extra, unmeasured run at c=64 under py-spy (sampling the server and its children) -> flame graph SVG."""
    out_dir = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    svg = out_dir / f"profile-{server.name}.svg"
    secs = max(3, round(args.duration))
    spy = subprocess.Popen(
        ["taskset", "-c", LOAD_CPU, str(VENVS / "tools" / "bin" / "py-spy"), "record", "--pid", str(running.proc.pid),
         "--subprocesses", "--idle", "--rate", "200", "--duration", str(secs + 1), "--format", "flamegraph",
         "--output", str(svg)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(0.5)
        run_wrk(running.base, server, 64, secs, body_file)
        _, err = spy.communicate(timeout=secs + 60)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    if not svg.is_file():
        log(f"{server.name}: py-spy wrote no profile: {err.strip()[-300:]}")
        return ""
    log(f"{server.name}: profile at c=64 in {svg}")
    return svg.name


# ---------------------------------------------------------------- report


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def fmt_ratio(r: float | None) -> str:
    return f"{r:.2f}×" if r is not None else "–"


def check_answers(results: list[dict], group: str, expected: dict | None) -> None:
    """K-Means: every server's labels for the probe points must equal the reference model's
    (benchmarks/kmeans_model.py, fit like apis/kmeans). Embeddings: close to Myelin's vector."""
    rows = [r for r in results if r["group"] == group and "answers" in r]
    if group == "kmeans":
        for r in rows:
            r["answers_match"] = expected is not None and r["answers"] == expected["clusters"]
            r["answers_reference"] = "the reference model"
        return
    ref = next((r for r in rows if r["kind"] == "myelin"), rows[0] if rows else None)
    for r in rows:
        a, b = r["answers"][0], ref["answers"][0]
        r["answers_match"] = (
            isinstance(a, list) and isinstance(b, list) and len(a) == len(b)
            and max(abs(x - y) for x, y in zip(a, b)) < 1e-4
        )
        r["answers_reference"] = ref["name"]


def group_table(results: list[dict], group: str, concurrencies: list[int]) -> list[str]:
    rows = [r for r in results if r["group"] == group]
    lines = ["| server | version | " + " | ".join(f"c={c} req/s · p50 · p99 (ms) · errors" for c in concurrencies)
             + " | answers |", "|---|---|" + "---|" * len(concurrencies) + "---|"]
    for r in rows:
        cells = []
        for c in concurrencies:
            s = r.get("levels", {}).get(str(c))
            if s:
                err = s["non2xx"] + s["socket_errors"]
                err_txt = "0" if not err else f"**{s['non2xx']} non-2xx, {s['socket_errors']} socket**"
                cells.append(f"{s['rps']:,.0f} · {s['p50_ms']:.2f} · {s['p99_ms']:.2f} · {err_txt}")
            else:
                cells.append("–")
        if r.get("error"):
            cells = [f"failed: {r['error'][:160]}"] + ["–"] * (len(concurrencies) - 1)
        match = r.get("answers_match")
        ans = "–" if match is None else ("same as " + r["answers_reference"] if match else "**differ**")
        if r.get("skipped"):
            cells = [f"skipped: {r['skipped']}"] + ["–"] * (len(concurrencies) - 1)
        lines.append(f"| {r['label']} | {r.get('version') or '–'} | " + " | ".join(cells) + f" | {ans} |")
    return lines


def rps(results: list[dict], name: str, c: int) -> float | None:
    for r in results:
        if r["name"] == name:
            s = r.get("levels", {}).get(str(c))
            return s["rps"] if s else None
    return None


def level(results: list[dict], name: str, c: int) -> dict | None:
    for r in results:
        if r["name"] == name:
            return r.get("levels", {}).get(str(c))
    return None


def ratios(results: list[dict], concurrencies: dict[str, list[int]]) -> dict:
    out: dict[str, dict[str, Any]] = {}
    for c in concurrencies["kmeans"]:
        peers = {r["name"]: rps(results, r["name"], c) for r in results if r["kind"] == "peer"}
        peers = {k: v for k, v in peers.items() if v}
        best = max(peers, key=peers.get) if peers else None
        m = rps(results, "myelin", c)
        out.setdefault("kmeans", {})[str(c)] = {
            "myelin/fastapi": ratio(m, rps(results, "fastapi", c)),
            "myelin/ceiling": ratio(m, rps(results, "ceiling", c)),
            "myelin/best_peer": ratio(m, peers.get(best) if best else None),
            "best_peer": best,
        }
    for c in concurrencies["trivial"]:
        ceiling = rps(results, "ceiling", c)
        out.setdefault("trivial", {})[str(c)] = {
            "myelin/fastapi": ratio(rps(results, "myelin-trivial", c), rps(results, "fastapi-trivial", c)),
            "myelin/ceiling": ratio(rps(results, "myelin-trivial", c), ceiling),
            "myelin_async/ceiling": ratio(rps(results, "myelin-async", c), ceiling)}
    for c in concurrencies["embedding"]:
        out.setdefault("embedding", {})[str(c)] = {
            "batching_on/off": ratio(rps(results, "myelin-embed", c), rps(results, "myelin-embed-nobatch", c)),
            "myelin/fastapi": ratio(rps(results, "myelin-embed", c), rps(results, "fastapi-embed", c)),
        }
    return out


def targets(results: list[dict], rat: dict) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) — evaluated at concurrency 64, the level the p99 target names."""
    c = "64"
    k = rat.get("kmeans", {}).get(c, {})
    lv = level(results, "myelin", 64)
    myelin = next((r for r in results if r["name"] == "myelin"), None)
    errors = None
    if myelin and myelin.get("levels"):
        errors = sum(s["non2xx"] + s["socket_errors"] for s in myelin["levels"].values())

    def t(name: str, value: float | None, goal: float, fmt: str, higher: bool = True):
        if value is None:
            return (name, "not measured", None)
        return (name, fmt.format(value), value >= goal if higher else value <= goal)

    tr = rat.get("trivial", {}).get(c, {})
    out = [
        t("kmeans: Myelin ≥ 8× FastAPI req/s (c=64)", k.get("myelin/fastapi"), 8, "{:.2f}×"),
        t("kmeans: Myelin ≥ 70% of the ceiling (c=64)", k.get("myelin/ceiling"), 0.7, "{:.0%}"),
        t("kmeans: Myelin ≥ 70% of the ceiling (c=256)", rat.get("kmeans", {}).get("256", {}).get("myelin/ceiling"),
          0.7, "{:.0%}"),
        t("kmeans: Myelin p99 ≤ 5 ms (c=64)", lv["p99_ms"] if lv else None, 5, "{:.2f} ms", higher=False),
        ("kmeans: Myelin no errors (all levels)", "not measured" if errors is None else f"{errors} errors",
         None if errors is None else errors == 0),
        t(f"kmeans: Myelin ≥ 3× best peer (c=64; best: {k.get('best_peer') or '–'})", k.get("myelin/best_peer"), 3,
          "{:.2f}×"),
        t("sentence-embedding: batching on ≥ 3× off (c=64)",
          rat.get("embedding", {}).get(c, {}).get("batching_on/off"), 3, "{:.2f}×"),
        t("trivial predictor: Myelin ≥ FastAPI (c=64)", tr.get("myelin/fastapi"), 1, "{:.2f}×"),
        t("trivial sync predictor (batching off): Myelin ≥ 50% of the ceiling (c=64)", tr.get("myelin/ceiling"), 0.5,
          "{:.0%}"),
        t("trivial `async def predict`: Myelin ≥ 70% of the ceiling (c=64)", tr.get("myelin_async/ceiling"), 0.7,
          "{:.0%}"),
    ]
    return out


def write_markdown(path: Path, meta: dict, results: list[dict], conc: dict[str, list[int]], rat: dict) -> str:
    L: list[str] = []
    L.append(f"Run {meta['started']} on {meta['cpu']} ({meta['cpus']} CPUs); command: `{meta['command']}`.")
    L.append(f"Each server pinned to core {SERVER_CPU}, wrk (`-t1`) to core {LOAD_CPU}; {meta['runs']} run(s) of "
             f"{meta['duration']} s per level after a {meta['warmup']} s warm-up; medians of the runs, errors summed.")
    L.append("")
    L.append("### Targets (ratios from this run)")
    L.append("")
    L.append("| target | measured | met |")
    L.append("|---|---|---|")
    for name, measured, met in targets(results, rat):
        L.append(f"| {name} | {measured} | {'yes' if met else ('**no**' if met is False else '–')} |")
    titles = {"kmeans": "K-Means (100 centroids, one 2-D point per request)",
              "trivial": "Trivial predictor (batching off): Myelin's own layers vs plain FastAPI",
              "embedding": "sentence-embedding (all-MiniLM-L6-v2, one sentence per request)"}
    for group in ("kmeans", "trivial", "embedding"):
        if not any(r["group"] == group for r in results):
            continue
        L.append("")
        L.append(f"### {titles[group]}")
        L.append("")
        L.extend(group_table(results, group, conc[group]))
        L.append("")
        keys = sorted({k for v in rat.get(group, {}).values() for k in v if k != "best_peer"})
        if keys:
            L.append("| ratio (req/s) | " + " | ".join(f"c={c}" for c in conc[group]) + " |")
            L.append("|---|" + "---|" * len(conc[group]))
            for key in keys:
                cells = []
                for c in conc[group]:
                    v = rat[group].get(str(c), {})
                    cell = fmt_ratio(v.get(key))
                    if key == "myelin/best_peer" and v.get("best_peer"):
                        cell += f" ({v['best_peer']})"
                    cells.append(cell)
                L.append(f"| {key} | " + " | ".join(cells) + " |")
    notes = [f"- **{r['label']}**: {r['note']}" for r in results if r.get("note")]
    if notes:
        L.append("")
        L.append("Payload and protocol differences:")
        L.append("")
        L.extend(notes)
    text = "\n".join(L) + "\n"
    path.write_text(f"# Benchmark results\n\n![throughput and p99 latency](benchmark.png)\n\n{text}")
    return text


def loadavg() -> str:
    """The machine's load average (1, 5, 15 min), printed with the figures: the machine may be shared."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def run_meta(script: str, argv: list[str] | None, **fields: object) -> dict:
    """What a benchmark script's results say about their run: date, CPU, the command that reproduces them, the
    script's own settings (`fields`) and the load average at the start (add `loadavg_end` when done)."""
    return {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "command": " ".join([f"python3 benchmarks/{script}", *(argv if argv is not None else sys.argv[1:])]),
            **fields, "loadavg_start": loadavg()}


def results_dir(quick: bool) -> Path:
    """Where a benchmark script writes its JSON: results/, or .work/quick/ for a smoke check."""
    out_dir = WORK / "quick" if quick else BENCH / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def publish(block: str, json_path: Path, document: dict, table: str, write_readme: bool) -> None:
    """Write a script's results: the JSON, the table on stdout and, when asked, in its README block."""
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    print(table)
    if write_readme:
        replace_readme_block(block, table)


def replace_readme_block(name: str, content: str) -> None:
    """Put `content` between benchmarks/README.md's `<!-- name:start -->` and `<!-- name:end -->` markers (each
    script's figures live between its own); nothing happens when the markers are missing."""
    readme = BENCH / "README.md"
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = readme.read_text()
    if start not in text or end not in text:
        return
    head, rest = text.split(start, 1)
    readme.write_text(head + f"{start}\n\n{content}\n{end}" + rest.split(end, 1)[1])


def update_readme(table_md: str) -> None:
    replace_readme_block("results", f"![throughput and p99 latency](results/benchmark.png)\n\n{table_md}")


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke check: 1 run of 2 s per level, 1 s warm-up")
    ap.add_argument("--only", default="", help="comma-separated server names or groups (kmeans, trivial, embedding)")
    ap.add_argument("--skip", default="", help="comma-separated server names or groups to leave out")
    ap.add_argument("--runs", type=int, help="runs per concurrency level (default 3; quick 1)")
    ap.add_argument("--duration", type=float, help="seconds per run (default 10; quick 2)")
    ap.add_argument("--warmup", type=float, help="warm-up seconds at the highest level (default 5; quick 1)")
    ap.add_argument("--concurrency", default="", help="override the levels for every group, e.g. 1,64")
    ap.add_argument("--out", type=Path, help="results folder (default benchmarks/results; quick .work/quick)")
    ap.add_argument("--no-install", action="store_true", help="do not install wrk or the peer virtualenvs")
    ap.add_argument("--no-readme", action="store_true", help="do not copy the tables into README.md")
    ap.add_argument("--profile", default="", help="comma-separated server names: after their runs, one extra "
                    "c=64 run under py-spy writes profile-<name>.svg (a flame graph) next to the results")
    ap.add_argument("--list", action="store_true", help="list the servers and exit")
    args = ap.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    args.duration = args.duration or (2.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 5.0)
    out_dir = args.out or (WORK / "quick" if args.quick else BENCH / "results")
    args.out_dir = out_dir
    args.profile = {x.strip() for x in args.profile.split(",") if x.strip()}
    conc = {"kmeans": [1, 8, 64, 256], "trivial": [1, 8, 64, 256], "embedding": [1, 8, 64]}
    if args.concurrency:
        levels = [int(x) for x in args.concurrency.split(",")]
        conc = {g: levels for g in conc}

    WORK.mkdir(exist_ok=True)
    if not MAIN_PY.exists():
        print(f"the runtime's virtualenv {MAIN_VENV} is missing (pip install -r requirements.txt into it)")
        return 2

    def read_or_none(folder: Path) -> dict | None:
        if not (folder / "api.yaml").is_file():
            return None
        try:
            return read_api(folder)
        except Exception as err:  # reported as a skip below
            log(f"cannot read {folder.relative_to(ROOT)}/api.yaml: {err}")
            return None

    kmeans_api = read_or_none(ROOT / "apis" / "kmeans")
    embed_api = read_or_none(ROOT / "apis" / "sentence-embedding")
    servers = catalogue(kmeans_api, embed_api)
    if args.list:
        for s in servers:
            print(f"{s.name:22} {s.group:10} {s.label}")
        return 0

    def picked(s: Server, spec: str) -> bool:
        names = {x.strip() for x in spec.split(",") if x.strip()}
        return s.name in names or s.group in names

    if args.only:
        unknown = {x.strip() for x in args.only.split(",")} - {s.name for s in servers} - {s.group for s in servers}
        if unknown:
            print(f"unknown server(s) or group(s): {', '.join(sorted(unknown))}; see --list")
            return 2
        servers = [s for s in servers if picked(s, args.only)]
    if args.skip:
        servers = [s for s in servers if not picked(s, args.skip)]

    if (os.cpu_count() or 1) < 2:
        print("needs 2 CPUs: the server is pinned to core 0 and wrk to core 1")
        return 2

    # Setup: wrk, and a virtualenv per peer (pinned requirements; skipped when unchanged).
    skipped: dict[str, str] = {}
    if not args.no_install:
        ensure_wrk()
        for name in sorted({s.venv for s in servers if s.venv != "main"} | {"tools"}):
            try:
                ensure_venv(name)
            except Exception as err:
                log(f"setup of {name} failed: {err}")
                for s in servers:
                    if s.venv == name:
                        skipped[s.name] = f"install failed: {err}"
    if not shutil.which("wrk"):
        print("wrk is not installed (apt-get install -y wrk), and --no-install was given")
        return 2

    for s in servers:
        if s.kind == "myelin" and not MYELIN.exists():
            skipped.setdefault(s.name, f"{MYELIN.relative_to(ROOT)} not found (runtime not installed yet)")
        if s.name == "myelin" and kmeans_api is None:
            skipped.setdefault(s.name, "apis/kmeans not found")
        if s.group == "embedding" and s.kind == "myelin" and embed_api is None:
            skipped.setdefault(s.name, "apis/sentence-embedding not found")
        if s.venv == "main":
            s.version = s.version or ""
        elif s.name not in skipped:
            s.version = dist_version(venv_python(s.venv), PEER_VENVS[s.venv][1])
    myelin_version = dist_version(MAIN_PY, "myelin")
    uvicorn_version = dist_version(MAIN_PY, "uvicorn")
    fastapi_version = dist_version(MAIN_PY, "fastapi")
    for s in servers:
        if s.kind == "myelin":
            s.version = f"myelin {myelin_version}"
        elif s.kind == "baseline":
            s.version = f"fastapi {fastapi_version}"
        elif s.kind == "ceiling":
            s.version = f"uvicorn {uvicorn_version}"

    # All K-Means servers load the same model: parameters from apis/kmeans/api.yaml.
    extra_env: dict[str, str] = {}
    expected = None
    if kmeans_api:
        cfg = (kmeans_api["raw"].get("predictor") or {}).get("config") or {}
        params = {k: cfg[k] for k in ("n_clusters", "n_features", "n_samples", "seed") if k in cfg}
        extra_env["BENCH_KMEANS_PARAMS"] = json.dumps(params)
    os.environ.update(extra_env)  # for the helper runs (model fit for MLServer) too
    if any(s.group == "kmeans" for s in servers):
        expected = main_venv_json(
            "import json, sys; sys.path.insert(0, 'benchmarks'); import kmeans_model as k; "
            "print(json.dumps({'points': k.PROBE_POINTS, 'clusters': k.expected_clusters()}))")

    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results: list[dict] = []
    for s in servers:
        if s.name in skipped:
            log(f"{s.name}: skipped ({skipped[s.name]})")
            results.append({"name": s.name, "label": s.label, "group": s.group, "kind": s.kind,
                            "version": s.version, "skipped": skipped[s.name], "levels": {}, "note": s.note})
            continue
        try:
            results.append(bench_server(s, args, expected, conc[s.group], extra_env))
        except Exception as err:
            log(f"{s.name}: FAILED: {err}")
            results.append({"name": s.name, "label": s.label, "group": s.group, "kind": s.kind,
                            "version": s.version, "error": str(err), "levels": {}, "note": s.note})
    for group in ("kmeans", "embedding"):
        check_answers(results, group, expected)
    for r in results:
        if r.get("answers_match") is False:
            log(f"{r['name']}: answers differ from {r['answers_reference']}: {r['answers']}")

    rat = ratios(results, conc)
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = "python3 benchmarks/run.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    meta = {
        "started": started, "command": cmd.strip(), "quick": args.quick, "runs": args.runs,
        "duration": args.duration, "warmup": args.warmup, "concurrency": conc, "cpus": os.cpu_count(),
        "cpu": cpu_model(), "python": platform.python_version(), "kernel": platform.release(),
    }
    (out_dir / "results.json").write_text(json.dumps({"meta": meta, "results": results, "ratios": rat}, indent=2))
    table_md = write_markdown(out_dir / "RESULTS.md", meta, results, conc, rat)
    plot(out_dir)
    if not args.quick and not args.only and not args.no_readme and out_dir == BENCH / "results":
        update_readme(table_md)
    print()
    print(table_md)
    log(f"wrote {out_dir.relative_to(ROOT) if out_dir.is_relative_to(ROOT) else out_dir}/"
        "{results.json,RESULTS.md,benchmark.png}")
    return 0 if not any(r.get("error") for r in results) else 1


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def plot(out_dir: Path) -> None:
    py = venv_python("tools")
    if not py.exists():
        log("no plot: benchmarks/.venvs/tools is missing (run without --no-install)")
        return
    rc = subprocess.run([str(py), str(BENCH / "plot.py"), str(out_dir / "results.json"),
                         str(out_dir / "benchmark.png")]).returncode
    if rc:
        log(f"plot failed (rc={rc})")


if __name__ == "__main__":
    sys.exit(main())
