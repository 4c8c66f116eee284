#!/usr/bin/env python3
"""A/B of two git revisions of the runtime: the kmeans benchmark, interleaved, against the raw-ASGI ceiling.

    python3 benchmarks/ab.py main HEAD                 # 5 rounds of (A, B, ceiling), best of 2 × 8 s each, c=64
    python3 benchmarks/ab.py main HEAD --quick         # 2 rounds, best of 1 × 2 s (a smoke check, ~1 min)
    python3 benchmarks/ab.py HEAD~1 HEAD --api trivial --concurrency 64,256
    python3 benchmarks/ab.py main .                    # `.` (any folder with predictor_image/): that tree as it is
    python3 benchmarks/ab.py . . --route-b oip          # one tree: A the native route, B the same API over OIP

Each revision is checked out with `git worktree add --detach` under benchmarks/.work/ab/ and served
by the same virtualenv (.venv) with PYTHONPATH pointing at that revision's predictor_image, from
that revision's own copy of the API (apis/kmeans, or benchmarks/apis/<api>). The three servers (A,
B and the ceiling of benchmarks/servers/ceiling.py, on this tree's uvicorn) are started once, pinned
to core 0, and warmed up; then every round loads each of them in turn with wrk pinned to core 1
(A and B swap places every other round, the ceiling runs in every round). A round's figure for a
server is the best of `--runs` runs; its ratio to the ceiling is divided by the same round's
ceiling, so a machine that slows down between rounds (other work on it) moves all three together.

Printed: per round both ratios and their difference; then the medians, and the difference A-B with
its spread (min..max and standard deviation over the rounds). The raw numbers go to
benchmarks/.work/ab/ab-<time>.json. Exit code 1 when a server failed or answered with errors.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (benchmarks/run.py: servers, wrk, the ceiling)

AB_WORK = run.WORK / "ab"
APIS = {"kmeans": "apis/kmeans", "trivial": "benchmarks/apis/trivial", "trivial-async": "benchmarks/apis/trivial-async",
        "async-def": "benchmarks/apis/async-def"}
ROUTES = ("myelin", "oip")


def route_request(route: str, spec: dict) -> tuple[str, bytes]:
    """(path, body) of one kmeans prediction on `route`: the native payload, or the same point as an OIP inference
    request in JSON (what tritonclient sends with binary_data=False; wrk sends one fixed body without the binary
    extension's header)."""
    if route == "oip":
        return f"/v2/models/{spec['raw']['name']}/infer", run.json_body({"inputs": [
            {"name": "features", "shape": [1, 2], "datatype": "FP32", "data": run.POINT}]})
    return spec["endpoint"], run.json_body({"features": run.POINT})


# ---------------------------------------------------------------- arithmetic (pure; tested)


def best(runs: list[dict]) -> dict:
    """The run with the most requests/s (the least disturbed by other work on the machine)."""
    return max(runs, key=lambda r: r["rps"])


def spread(values: list[float]) -> dict:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def summarize(rounds: list[dict], levels: list[int]) -> dict:
    """rounds: [{"A": {conns: rps}, "B": {...}, "ceiling": {...}}] -> per level: ratios per round, medians, A-B."""
    out: dict[str, Any] = {}
    for c in levels:
        key = str(c)
        ra, rb, diff, rel = [], [], [], []
        for rnd in rounds:
            ceil = rnd["ceiling"][key]
            a, b = rnd["A"][key] / ceil, rnd["B"][key] / ceil
            ra.append(a)
            rb.append(b)
            diff.append(a - b)
            rel.append(rnd["B"][key] / rnd["A"][key])
        out[key] = {
            "ratio_a": ra, "ratio_b": rb, "a_minus_b": diff,
            "A": spread(ra), "B": spread(rb), "diff": spread(diff), "b_over_a": spread(rel),
            "ceiling_rps": spread([rnd["ceiling"][key] for rnd in rounds]),
        }
        if all(key in rnd.get("cpu", {}).get(s, {}) for rnd in rounds for s in ("A", "B", "ceiling")):
            # CPU per request, and the ceiling's CPU per request over each server's, per round: what the ratio to
            # the ceiling would be on a core that does nothing else (robust to other work slowing the servers).
            cpu = {s: [rnd["cpu"][s][key] for rnd in rounds] for s in ("A", "B", "ceiling")}
            out[key]["cpu_us"] = {s: spread(v) for s, v in cpu.items()}
            out[key]["cpu_ratio_a"] = spread([c / a for c, a in zip(cpu["ceiling"], cpu["A"])])
            out[key]["cpu_ratio_b"] = spread([c / b for c, b in zip(cpu["ceiling"], cpu["B"])])
            out[key]["cpu_b_over_a"] = spread([a / b for a, b in zip(cpu["A"], cpu["B"])])
    return out


def pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def pts(x: float) -> str:
    return f"{x * 100:+.1f} pts"


def report(summary: dict, rounds: list[dict], label_a: str, label_b: str) -> str:
    lines = []
    for key, s in summary.items():
        lines.append(f"c={key}: ratio to the ceiling per round (A = {label_a}, B = {label_b})")
        lines.append("  round   A        B        A-B         ceiling req/s   A req/s   B req/s")
        for i, rnd in enumerate(rounds):
            lines.append(f"  {i + 1:>5}   {pct(s['ratio_a'][i]):>7}  {pct(s['ratio_b'][i]):>7}  "
                         f"{pts(s['a_minus_b'][i]):>10}  {rnd['ceiling'][key]:>13,.0f}   "
                         f"{rnd['A'][key]:>7,.0f}   {rnd['B'][key]:>7,.0f}")
        d = s["diff"]
        lines.append(f"  median  A {pct(s['A']['median'])} (range {pct(s['A']['min'])}..{pct(s['A']['max'])}), "
                     f"B {pct(s['B']['median'])} (range {pct(s['B']['min'])}..{pct(s['B']['max'])})")
        lines.append(f"  A-B     median {pts(d['median'])}, range {pts(d['min'])}..{pts(d['max'])}, "
                     f"stdev {d['stdev'] * 100:.1f} pts over {len(rounds)} rounds; "
                     f"B/A req/s median {s['b_over_a']['median']:.3f}")
        if "cpu_us" in s:
            u = s["cpu_us"]
            lines.append(f"  CPU µs per request, median: A {u['A']['median']:.1f}, B {u['B']['median']:.1f}, ceiling "
                         f"{u['ceiling']['median']:.1f}; ceiling/server (the ratio on an otherwise idle core): "
                         f"A {pct(s['cpu_ratio_a']['median'])} (range {pct(s['cpu_ratio_a']['min'])}.."
                         f"{pct(s['cpu_ratio_a']['max'])}), B {pct(s['cpu_ratio_b']['median'])} (range "
                         f"{pct(s['cpu_ratio_b']['min'])}..{pct(s['cpu_ratio_b']['max'])}); A/B CPU median "
                         f"{s['cpu_b_over_a']['median']:.3f}")
        c = s["ceiling_rps"]
        lines.append(f"  ceiling {c['median']:,.0f} req/s median (range {c['min']:,.0f}..{c['max']:,.0f}: "
                     f"{(c['max'] - c['min']) / c['median'] * 100:.0f}% of the median, the machine's noise)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rev_a", help="git revision (or a folder holding predictor_image/, e.g. `.`)")
    ap.add_argument("rev_b", help="git revision (or a folder holding predictor_image/)")
    ap.add_argument("--quick", action="store_true", help="2 rounds, 1 run of 2 s each, 1 s warm-up")
    ap.add_argument("--rounds", type=int, help="rounds of (A, B, ceiling) (default 5; quick 2)")
    ap.add_argument("--runs", type=int, help="runs per server per round, the best counts (default 2; quick 1)")
    ap.add_argument("--duration", type=float, help="seconds per run (default 8; quick 2)")
    ap.add_argument("--warmup", type=float, help="warm-up seconds per server (default 3; quick 1)")
    ap.add_argument("--concurrency", default="64", help="connections, comma-separated (default 64)")
    ap.add_argument("--api", default="kmeans", choices=sorted(APIS), help="the API served by A and B")
    ap.add_argument("--keep-worktrees", action="store_true", help="leave the revisions' worktrees for the next run")
    ap.add_argument("--route-a", default="myelin", choices=ROUTES, help="the route A is loaded on: the native POST "
                    "<endpoint> (myelin, the default) or the Open Inference Protocol's infer (oip; kmeans only)")
    ap.add_argument("--route-b", default="myelin", choices=ROUTES, help="the route B is loaded on (as --route-a)")
    args = ap.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.runs = args.runs or (1 if args.quick else 2)
    args.duration = args.duration or (2.0 if args.quick else 8.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 3.0)
    try:
        args.levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--concurrency: expected comma-separated integers, got {args.concurrency!r}")
    if not args.levels or any(c < 1 for c in args.levels):
        ap.error(f"--concurrency: expected positive integers, got {args.concurrency!r}")
    if args.rounds < 1 or args.runs < 1 or args.duration <= 0:
        ap.error("--rounds, --runs and --duration must be positive")
    if "oip" in (args.route_a, args.route_b) and args.api != "kmeans":
        ap.error("--route-a/--route-b oip: only --api kmeans declares OIP tensors")
    return args


def round_order(i: int) -> list[str]:
    """A and B swap places every other round (drift during a round favours neither); the ceiling closes it."""
    return ["A", "B", "ceiling"] if i % 2 == 0 else ["B", "A", "ceiling"]


# ---------------------------------------------------------------- revisions


@dataclass
class Revision:
    label: str  # what the user typed
    sha: str  # the commit, or "" for a folder taken as it is
    tree: Path
    created: bool  # a worktree this run added (removed at the end unless --keep-worktrees)


def git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=run.ROOT, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"git {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout.strip()


def checkout(rev: str) -> Revision:
    folder = Path(rev)
    if folder.is_dir() and (folder / "predictor_image" / "myelin").is_dir():
        return Revision(rev, "", folder.resolve(), False)
    sha = git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    tree = AB_WORK / f"rev-{sha[:12]}"
    if tree.is_dir() and (tree / ".git").exists():
        with contextlib.suppress(RuntimeError):
            if subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True).stdout.strip() == sha:
                return Revision(rev, sha, tree, False)
        git("worktree", "remove", "--force", str(tree))
    AB_WORK.mkdir(parents=True, exist_ok=True)
    git("worktree", "add", "--detach", str(tree), sha)
    return Revision(rev, sha, tree, True)


def myelin_server(name: str, rev: Revision, api: str, route: str = "myelin") -> run.Server:
    env = {"PYTHONPATH": str(rev.tree / "predictor_image")}
    folder = rev.tree / APIS[api]
    if not (folder / "api.yaml").is_file():  # an older revision without this API: this tree's copy
        folder = run.ROOT / APIS[api]
    spec = run.read_api(folder, env=env)
    host = run.myelin_host_flag(env)
    path, body = route_request(route, spec)
    return run.Server(
        name, f"{name}: {rev.label}" + (f" ({rev.sha[:10]})" if rev.sha else "") + (f" over {route}" if route != "myelin"
                                                                                      else ""), api, "myelin", "main",
        lambda port: [str(run.MAIN_PY), "-m", "myelin", "serve", str(folder), "--port", str(port), *host],
        path, body, ready_path="/readyz", cwd=rev.tree, env=env, ready_timeout=300,
    )


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if (os.cpu_count() or 1) < 2:
        print("needs 2 CPUs: the servers are pinned to core 0 and wrk to core 1")
        return 2
    if not run.MAIN_PY.exists():
        print(f"the runtime's virtualenv {run.MAIN_VENV} is missing (pip install -r requirements.txt into it)")
        return 2
    run.ensure_wrk()
    revs: list[Revision] = []
    running: dict[str, run.Running] = {}
    bodies: dict[str, Path] = {}
    failed = False
    try:
        revs = [checkout(args.rev_a), checkout(args.rev_b)]
        servers = {"A": myelin_server("A", revs[0], args.api, args.route_a),
                   "B": myelin_server("B", revs[1], args.api, args.route_b),
                   "ceiling": run.ceiling_server()}
        logs = AB_WORK / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for key, server in servers.items():
            port = run.free_port()
            running[key] = run.Running(server, port, logs / f"{key}.log", {})
            bodies[key] = AB_WORK / f"body-{key}.bin"
            bodies[key].write_bytes(server.body)
        for key, r in running.items():
            r.wait_ready()
            status, resp = run.http("POST", r.base + r.server.path, r.server.body, r.server.content_type)
            if status != 200:
                raise RuntimeError(f"{r.server.label}: sample request answered {status}: {resp[:200]!r}")
            if args.warmup > 0:
                run.run_wrk(r.base, r.server, max(args.levels), args.warmup, bodies[key])
            run.log(f"{r.server.label}: ready on port {r.port}")
        rounds: list[dict] = []
        raw: list[dict] = []
        errors = {key: 0 for key in running}
        for i in range(args.rounds):
            rnd: dict[str, Any] = {key: {} for key in running}
            for c in args.levels:
                for key in round_order(i):
                    r = running[key]
                    runs = [run.run_wrk(r.base, r.server, c, args.duration, bodies[key], pgid=r.proc.pid)
                            for _ in range(args.runs)]
                    if r.proc.poll() is not None:
                        raise RuntimeError(f"{r.server.label} exited with {r.proc.returncode}: {r.log_tail()}")
                    errors[key] += sum(x["non2xx"] + x["socket_errors"] for x in runs)
                    top = best(runs)
                    rnd[key][str(c)] = top["rps"]
                    cpus = [x["cpu_us"] for x in runs if x.get("cpu_us")]
                    if cpus:
                        rnd.setdefault("cpu", {}).setdefault(key, {})[str(c)] = min(cpus)
                    raw.append({"round": i + 1, "server": key, "conns": c, "runs": runs})
            rounds.append(rnd)
            line = "  ".join(f"c={c}: A {pct(rnd['A'][str(c)] / rnd['ceiling'][str(c)])} "
                             f"B {pct(rnd['B'][str(c)] / rnd['ceiling'][str(c)])}" for c in args.levels)
            run.log(f"round {i + 1}/{args.rounds}: {line}")
        summary = summarize(rounds, args.levels)
        print()
        print(report(summary, rounds, revs[0].label, revs[1].label))
        if any(errors.values()):
            failed = True
            print(f"errors (non-2xx + socket) per server: {errors}")
        cmd = "python3 benchmarks/ab.py " + " ".join(argv if argv is not None else sys.argv[1:])
        AB_WORK.mkdir(parents=True, exist_ok=True)
        out = AB_WORK / f"ab-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
        out.write_text(json.dumps({
            "command": cmd, "cpu": run.cpu_model(), "api": args.api, "levels": args.levels, "runs": args.runs,
            "duration": args.duration, "revisions": {k: {"label": v.label, "sha": v.sha} for k, v in zip("AB", revs)},
            "rounds": rounds, "summary": summary, "errors": errors, "raw": raw,
        }, indent=2))
        run.log(f"wrote {out.relative_to(run.ROOT)}")
    except Exception as err:
        run.log(f"FAILED: {err}")
        failed = True
    finally:
        for r in running.values():
            r.stop()
        if not args.keep_worktrees:
            for rev in revs:
                if rev.created:
                    with contextlib.suppress(RuntimeError):
                        git("worktree", "remove", "--force", str(rev.tree))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
