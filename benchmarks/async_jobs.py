#!/usr/bin/env python3
"""AsyncAPI benchmark: jobs/s through the embedded (SQLite) store with a trivial predictor, and the
submit latency (the 202, answered once the payload is durably stored).

    python3 benchmarks/async_jobs.py                 # 3 runs × 10 s per level: c=1, 16, 64
    python3 benchmarks/async_jobs.py --quick         # 1 run × 3 s per level (smoke check)

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
    BENCH, MYELIN, ROOT, WORK, Running, Server, cpu_model, ensure_wrk, free_port, http, log, run_wrk,
)

API = "trivial-async"
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


def table(meta: dict, levels: dict[str, dict]) -> str:
    lines = [
        f"Run {meta['date']} on {meta['cpu']}; command: `{meta['command']}`.",
        f"Server (gateway + worker, one process) pinned to core 0, wrk (`-t1`) to core 1; {meta['runs']} run(s) of "
        f"{meta['duration']:g} s of submits per level, medians; a fresh SQLite store per run.",
        "",
        "| connections | jobs/s (submit → completed) | submits/s | submit p50 (ms) | submit p99 (ms) | "
        "backlog when submits stopped | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for conns, s in levels.items():
        lines.append(f"| {conns} | {s['jobs_per_s']:,.0f} | {s['submit_rps']:,.0f} | {s['submit_p50_ms']:.2f} | "
                     f"{s['submit_p99_ms']:.2f} | {s['backlog']:,} | {s['errors']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 run of 3 s per level; nothing written")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", default="1,16,64")
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
    for conns in [int(c) for c in args.concurrency.split(",")]:
        runs = [one_run(conns, args.duration, r, body_file) for r in range(args.runs)]
        raw[str(conns)] = runs
        s = levels[str(conns)] = {
            key: statistics.median(r[key] for r in runs)
            for key in ("jobs_per_s", "submit_rps", "submit_p50_ms", "submit_p99_ms")
        }
        s["backlog"] = int(statistics.median(r["backlog_at_end_of_submits"] for r in runs))
        s["errors"] = sum(r["non2xx"] + r["socket_errors"] for r in runs)
        log(f"async c={conns:<3} {s['jobs_per_s']:8.0f} jobs/s  submits {s['submit_rps']:8.0f}/s  "
            f"submit p50 {s['submit_p50_ms']:.2f} ms  p99 {s['submit_p99_ms']:.2f} ms  backlog {s['backlog']}  "
            f"errors {s['errors']}")
    command = "python3 benchmarks/async_jobs.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    meta = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu_model(),
            "command": command.strip(), "runs": args.runs, "duration": args.duration}
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
