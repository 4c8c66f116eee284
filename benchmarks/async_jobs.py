#!/usr/bin/env python3
"""AsyncAPI benchmark: jobs/s through the embedded (SQLite) store with a trivial predictor, and the
submit latency (the 202, answered once the payload is durably stored).

    python3 benchmarks/async_jobs.py                 # 3 runs × 5 s per level and kind: c=1, 16, 64 (~3 min)
    python3 benchmarks/async_jobs.py --quick         # 1 run × 3 s per level (smoke check)

Beside each AsyncAPI run, the same predictor served as a RealtimeAPI (generated under .work/apis/, the same
serving limits) is loaded by the same wrk at the same connections: its req/s and latency are the comparison.

One process serves `benchmarks/apis/trivial-async` (`myelin serve`, gateway and worker in one process,
role `all`) pinned to core 0, its store in a fresh state directory per run under benchmarks/.work/async/.
wrk pinned to core 1 submits jobs for the run's duration (`wrk -t1 -c<N> -s post.lua`): its latency
percentiles are the submit latency, with the worker running jobs on the same core meanwhile. Then the
harness reads `/metrics` every 20 ms until every submitted job is completed. jobs/s = jobs submitted
÷ (first submit → last completion). Medians over the runs; the results go to
benchmarks/results/async.json and the table between the `async:` markers in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (  # noqa: E402 - the serving benchmark's harness: servers pinned, wrk, stop by pid
    BENCH, MYELIN, ROOT, WORK, Running, Server, cpu_model, ensure_wrk, free_port, http, loadavg, log, run_wrk,
)

API = "trivial-async"
REALTIME_API = "trivial-realtime"  # the same predictor served as a RealtimeAPI (generated under .work/apis/)
COMPLETED = re.compile(r'^myelin_async_jobs_total\{api="trivial-async",status="completed"\} ([0-9.e+]+)$', re.M)
SUBMITTED = re.compile(r'^myelin_async_jobs_total\{api="trivial-async",status="submitted"\} ([0-9.e+]+)$', re.M)



def counter(base: str, pattern: re.Pattern) -> int:
    status, body = http("GET", base + "/metrics")
    match = pattern.search(body.decode())
    return int(float(match.group(1))) if status == 200 and match else 0


def wait_completed(base: str, target: int, timeout: float) -> float:
    """Seconds until `target` jobs are completed (raises past `timeout`)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if counter(base, COMPLETED) >= target:
            return time.monotonic()
        time.sleep(0.02)
    raise RuntimeError(f"only {counter(base, COMPLETED)} of {target} jobs completed within {timeout:.0f}s")


def one_run(conns: int, seconds: float, run: int, body_file: Path) -> dict:
    state = WORK / "async" / f"c{conns}-r{run}"
    shutil.rmtree(state, ignore_errors=True)
    server = Server(
        name="myelin-async", label="Myelin AsyncAPI, trivial predictor", group="async", kind="myelin", venv="main",
        command=lambda port: [str(MYELIN), "serve", f"benchmarks/apis/{API}", "--port", str(port)],
        path=f"/{API}", body=body_file.read_bytes(), ready_path="/readyz", env={"MYELIN_STATE_DIR": str(state)},
    )
    logfile = WORK / "logs" / f"async-c{conns}-r{run}.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    running = Running(server, free_port(), logfile, {})
    try:
        running.wait_ready()
        status, _ = http("POST", running.base + server.path, server.body)
        if status != 202:
            raise RuntimeError(f"submit answered {status}")
        wait_completed(running.base, 1, 30)
        started = time.monotonic()
        load = run_wrk(running.base, server, conns, seconds, body_file)
        submitted = counter(running.base, SUBMITTED) - 1
        backlog = submitted - (counter(running.base, COMPLETED) - 1)
        done = wait_completed(running.base, submitted + 1, 600)
        if running.proc.poll() is not None:
            raise RuntimeError(f"server exited during the run: {running.log_tail()}")
    finally:
        running.stop()
        shutil.rmtree(state, ignore_errors=True)
    return {"conns": conns, "submitted": submitted, "wrk_requests": load["requests"], "non2xx": load["non2xx"],
            "socket_errors": load["socket_errors"], "submit_rps": load["rps"], "submit_p50_ms": load["p50_ms"],
            "submit_p99_ms": load["p99_ms"], "backlog_at_end_of_submits": backlog,
            "jobs_per_s": submitted / (done - started)}


def realtime_api() -> Path:
    """The same predictor served as a RealtimeAPI: trivial-async's predictor.py linked, the same serving limits
    (max_concurrency 16 on 1 thread), a queue long enough for 64 connections (generated under .work/apis/)."""
    src = BENCH / "apis" / API
    dst = WORK / "apis" / REALTIME_API
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    (dst / "predictor.py").symlink_to(src / "predictor.py")
    (dst / "api.yaml").write_text(
        f"# generated by benchmarks/async_jobs.py: {src.relative_to(ROOT)}'s predictor as a RealtimeAPI\n"
        f"name: {REALTIME_API}\nserving:\n  max_concurrency: 16\n  threads: 1\n  max_queue_length: 1000\n")
    return dst


def realtime_run(conns: int, seconds: float, run: int, body_file: Path) -> dict:
    """The same predictor answered synchronously: wrk's req/s and latency at the same connections."""
    server = Server(
        name="myelin-realtime", label="the same predictor, RealtimeAPI", group="async", kind="myelin", venv="main",
        command=lambda port: [str(MYELIN), "serve", str(realtime_api()), "--port", str(port)],
        path=f"/{REALTIME_API}", body=body_file.read_bytes(), ready_path="/readyz",
    )
    logfile = WORK / "logs" / f"realtime-c{conns}-r{run}.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    running = Running(server, free_port(), logfile, {})
    try:
        running.wait_ready()
        status, body = http("POST", running.base + server.path, server.body)
        if status != 200:
            raise RuntimeError(f"realtime request answered {status}: {body[:200]!r}")
        load = run_wrk(running.base, server, conns, seconds, body_file)
        if running.proc.poll() is not None:
            raise RuntimeError(f"server exited during the run: {running.log_tail()}")
    finally:
        running.stop()
    return {"conns": conns, "rps": load["rps"], "p50_ms": load["p50_ms"], "p99_ms": load["p99_ms"],
            "requests": load["requests"], "non2xx": load["non2xx"], "socket_errors": load["socket_errors"]}


def table(meta: dict, levels: dict[str, dict]) -> str:
    lines = [
        f"Run {meta['date']} on {meta['cpu']}; command: `{meta['command']}`; load average "
        f"{meta['loadavg_start']} at the start, {meta['loadavg_end']} at the end (1, 5, 15 min; the machine is shared).",
        f"Server (one process: for the AsyncAPI gateway + worker) pinned to core 0, wrk (`-t1`) to core 1; "
        f"{meta['runs']} run(s) of {meta['duration']:g} s of requests per level and kind, AsyncAPI and realtime "
        "runs interleaved, medians; a fresh SQLite store per AsyncAPI run. The same predictor (returns a constant) "
        f"and the same serving limits (max_concurrency 16, 1 thread) in both.",
        "",
        "| connections | AsyncAPI jobs/s (submit → completed) | submits/s | submit p50 (ms) | submit p99 (ms) | "
        "backlog when submits stopped | errors | realtime req/s | realtime p50 (ms) | realtime p99 (ms) | "
        "realtime errors | jobs/s ÷ realtime req/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for conns, s in levels.items():
        rt = s.get("realtime")
        rt_cells = (f"{rt['rps']:,.0f} | {rt['p50_ms']:.2f} | {rt['p99_ms']:.2f} | {rt['errors']} | "
                    f"{s['jobs_per_s'] / rt['rps']:.2f}" if rt and rt["rps"] else "– | – | – | – | –")
        lines.append(f"| {conns} | {s['jobs_per_s']:,.0f} | {s['submit_rps']:,.0f} | {s['submit_p50_ms']:.2f} | "
                     f"{s['submit_p99_ms']:.2f} | {s['backlog']:,} | {s['errors']} | {rt_cells} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 run of 3 s per level; nothing written")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of requests per run (default 5)")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--no-realtime", action="store_true",
                        help="leave out the same predictor served realtime (the comparison column)")
    parser.add_argument("--no-readme", action="store_true", help="do not update benchmarks/README.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.duration, args.no_readme = 1, 3.0, True
    ensure_wrk()
    body_file = WORK / "body-async.json"
    body_file.parent.mkdir(parents=True, exist_ok=True)
    body_file.write_bytes(b'{"x": 1}')
    levels: dict[str, dict] = {}
    raw: dict[str, list[dict]] = {}
    loadavg_start = loadavg()
    for conns in [int(c) for c in args.concurrency.split(",")]:
        runs, rt_runs = [], []
        for r in range(args.runs):  # interleaved: a machine that slows down mid-level slows both kinds
            runs.append(one_run(conns, args.duration, r, body_file))
            if not args.no_realtime:
                rt_runs.append(realtime_run(conns, args.duration, r, body_file))
        raw[str(conns)] = runs
        raw[f"{conns}/realtime"] = rt_runs
        s = levels[str(conns)] = {
            key: statistics.median(r[key] for r in runs)
            for key in ("jobs_per_s", "submit_rps", "submit_p50_ms", "submit_p99_ms")
        }
        s["backlog"] = int(statistics.median(r["backlog_at_end_of_submits"] for r in runs))
        s["errors"] = sum(r["non2xx"] + r["socket_errors"] for r in runs)
        log(f"async c={conns:<3} {s['jobs_per_s']:8.0f} jobs/s  submits {s['submit_rps']:8.0f}/s  "
            f"submit p50 {s['submit_p50_ms']:.2f} ms  p99 {s['submit_p99_ms']:.2f} ms  backlog {s['backlog']}  "
            f"errors {s['errors']}")
        if rt_runs:
            rt = s["realtime"] = {key: statistics.median(r[key] for r in rt_runs) for key in ("rps", "p50_ms", "p99_ms")}
            rt["errors"] = sum(r["non2xx"] + r["socket_errors"] for r in rt_runs)
            log(f"realtime c={conns:<3} {rt['rps']:8.0f} req/s  p50 {rt['p50_ms']:.2f} ms  p99 {rt['p99_ms']:.2f} ms  "
                f"errors {rt['errors']}")
    command = "python3 benchmarks/async_jobs.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    meta = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu_model(),
            "command": command.strip(), "runs": args.runs, "duration": args.duration,
            "loadavg_start": loadavg_start, "loadavg_end": loadavg()}
    md = table(meta, levels)
    print(md)
    if not args.quick:
        out = BENCH / "results" / "async.json"
        out.write_text(json.dumps({"meta": meta, "levels": levels, "runs": raw}, indent=2) + "\n")
    if not args.no_readme:
        readme = BENCH / "README.md"
        text = readme.read_text()
        start, end = "<!-- async:start -->\n", "<!-- async:end -->"
        if start in text and end in text:
            before, rest = text.split(start, 1)
            readme.write_text(before + start + "\n" + md + "\n" + end + rest.split(end, 1)[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
