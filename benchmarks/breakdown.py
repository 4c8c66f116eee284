#!/usr/bin/env python3
"""Where a request's CPU time goes: py-spy samples of `myelin serve` under wrk load, binned per stage.

    python3 benchmarks/breakdown.py                       # this tree, kmeans, c=64, 10 s, Python frames
    python3 benchmarks/breakdown.py main --svg benchmarks/results/profile-main-kmeans.svg
    python3 benchmarks/breakdown.py . --api trivial --seconds 8

The server (one revision, checked out as ab.py does, or a folder) runs on core 0 and wrk on core 1,
as in run.py; after a warm-up, py-spy (benchmarks/.venvs/tools, `requirements-tools.txt`) records
every thread of the server for `--seconds` in raw (collapsed) form while wrk loads it, and each
sample is put in one bin by the innermost frame that names a stage (table below). Idle samples
(threads waiting in epoll or for work) are not recorded, so the shares are of the CPU the server
used; with core 0 saturated, share × (1 / req/s) is the time per request. With `--svg`, a second
recording of the same length writes a flame graph (py-spy's own SVG).
"""

from __future__ import annotations

import argparse
import collections
import linecache
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ab  # noqa: E402
import run  # noqa: E402

PY_SPY = run.VENVS / "tools" / "bin" / "py-spy"

# (stage, pattern on one frame "function (file:line)"), tried from the innermost frame outwards; the first
# frame that matches any pattern decides the sample's stage. Order within a frame: first pattern wins.
STAGES: list[tuple[str, str]] = [
    ("logging", r"myelin/logs\.py"),
    ("metrics", r"myelin/metrics\.py|prometheus_client/"),
    ("encode", r"\b(encode|has_nonfinite) \(.*myelin/codec\.py"),
    ("decode", r"\b(decode|decode_json|media_type) \(.*myelin/codec\.py"),
    ("predict (the model)", r"apis/[^/]+/predictor\.py|benchmarks/apis/.*predictor\.py|sklearn/|numpy/"),
    ("thread hand-off (executor, wake-ups)", r"concurrent/futures/|threading\.py|myelin/handoff\.py|"
                                             r"call_soon_threadsafe|_run_once_threadsafe|_write_to_self|"
                                             r"_read_from_self|handle_signal_wakeup"),
    ("batching", r"myelin/batching\.py"),
    ("admission & deadline", r"myelin/admission\.py|\b(enter|leave) \(.*myelin/runtime\.py|"
                             r"\b_expire \(|myelin/invoke\.py"),
    ("body read", r"\bread_body \(|\breceive \(.*uvicorn/"),
    ("write (send, transport)", r"\b(send_body|send_error) \(|\bsend \(.*uvicorn/|"
                                r"UVStream_write|uv_write|__pyx.*_write|\bwritev?\b|\bsendmsg\b"),
    ("request head & routing", r"myelin/endpoint\.py|myelin/http_io\.py|\b__call__ \(.*myelin/server\.py|"
                               r"proxy_headers|message_logger"),
    ("HTTP parse (httptools, uvicorn protocol)", r"httptools_impl\.py|myelin/protection\.py|httptools|"
                                                 r"llhttp|parser\.(cpython|pyx)|feed_data"),
    ("uvicorn task & connection glue", r"uvicorn/"),
    ("event loop (uvloop/libuv in C: epoll, socket reads, callbacks)", r"^Runner\.run \(|\brun_until_complete\b"),
    ("garbage collector", r"\bgc_collect|collect_main|collect_with_callback|_PyGC_|gc_collect_main"),
]
_COMPILED = [(stage, re.compile(p)) for stage, p in STAGES]
OTHER = "event loop and other (uvloop/libuv, asyncio, interpreter)"


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.+):(?P<line>\d+)\)$")
#: Source lines where a thread waits for work: samples there are idle time py-spy did not recognise.
_WAITS = re.compile(r"\.get\(block=True\)|\.get\(\)|\bwaiter\.acquire\(|\.wait\(")


def idle(stack: list[str]) -> bool:
    m = _FRAME.match(stack[-1]) if stack else None
    if not m:
        return False
    return bool(_WAITS.search(linecache.getline(m["file"], int(m["line"]))))


def classify(stack: list[str]) -> str:
    """stack: frames from the outermost to the innermost."""
    for frame in reversed(stack):
        for stage, pattern in _COMPILED:
            if pattern.search(frame):
                return stage
    return OTHER


def parse_collapsed(text: str) -> collections.Counter:
    """py-spy --format raw: `frame;frame;...;frame count` per line -> Counter(stage -> samples)."""
    bins: collections.Counter = collections.Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if not idle(frames):
            bins[classify(frames)] += int(count)
    return bins


def table(bins: collections.Counter, rps: float) -> str:
    total = sum(bins.values()) or 1
    per_req_us = 1e6 / rps if rps else 0.0
    rows = ["| stage | share of the server's CPU samples | µs per request |", "|---|---|---|"]
    for stage, n in bins.most_common():
        rows.append(f"| {stage} | {n / total:.1%} | {n / total * per_req_us:.1f} |")
    rows.append(f"| **total** ({total} samples) | 100% | {per_req_us:.1f} (1 / {rps:,.0f} req/s) |")
    return "\n".join(rows)


def record(pid: int, seconds: float, fmt: str, out: Path, native: bool, rate: int) -> subprocess.Popen:
    cmd = [str(PY_SPY), "record", "--pid", str(pid), "--rate", str(rate), "--duration", str(round(seconds)),
           "--format", fmt, "--output", str(out)]
    # --native stops the process for each sample (ptrace) to unwind C frames: slow, so it is opt-in;
    # Python frames are read without stopping it (--nonblocking), which leaves the load undisturbed.
    cmd.append("--native" if native else "--nonblocking")
    if fmt == "raw":
        cmd.append("--full-filenames")  # so that idle() can read the source line a thread waits on
    return subprocess.Popen(["taskset", "-c", run.LOAD_CPU, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def profiled_load(running: run.Running, body: Path, conns: int, seconds: float, fmt: str, out: Path, native: bool,
                  rate: int) -> dict:
    spy = record(running.proc.pid, seconds, fmt, out, native, rate)
    try:
        time.sleep(0.5)  # py-spy attached before the load starts
        result = run.run_wrk(running.base, running.server, conns, seconds, body)
        _, err = spy.communicate(timeout=seconds + 120)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    if not out.is_file():
        raise RuntimeError(f"py-spy wrote nothing: {err.strip()[-400:]}")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rev", nargs="?", default=".", help="git revision or folder (default: this tree)")
    ap.add_argument("--api", default="kmeans", choices=sorted(ab.APIS))
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--native", action="store_true", help="also C frames (uvloop, httptools): stops the server "
                    "for every sample, so use a low --rate (20) and read only the shares")
    ap.add_argument("--svg", type=Path, help="also record a flame graph to this SVG")
    ap.add_argument("--raw", type=Path, help="keep the collapsed stacks here")
    args = ap.parse_args(argv)
    if not PY_SPY.exists():
        run.ensure_venv("tools")
    run.ensure_wrk()
    rev = ab.checkout(args.rev)
    server = ab.myelin_server("profiled", rev, args.api)
    work = ab.AB_WORK
    work.mkdir(parents=True, exist_ok=True)
    body = work / "body-profiled.bin"
    body.write_bytes(server.body)
    running = run.Running(server, run.free_port(), work / "logs-profiled.log", {})
    try:
        running.wait_ready()
        run.run_wrk(running.base, server, args.conns, 3, body)  # warm-up
        raw = args.raw or work / "profile.collapsed"
        result = profiled_load(running, body, args.conns, args.seconds, "raw", raw, args.native, args.rate)
        bins = parse_collapsed(raw.read_text())
        print(f"{server.label}, {args.api}, c={args.conns}: {result['rps']:,.0f} req/s under py-spy "
              f"(p99 {result['p99_ms']:.2f} ms)\n")
        print(table(bins, result["rps"]))
        if args.svg:
            args.svg.parent.mkdir(parents=True, exist_ok=True)
            profiled_load(running, body, args.conns, args.seconds, "flamegraph", args.svg, args.native,
                          args.rate)
            print(f"\nflame graph: {args.svg}")
    finally:
        running.stop()
        if rev.created:
            ab.git("worktree", "remove", "--force", str(rev.tree))
    return 0


if __name__ == "__main__":
    sys.exit(main())
