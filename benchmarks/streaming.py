#!/usr/bin/env python3
"""Streaming in Myelin: the cost per item against the same generator consumed in-process, and the time to
the first item at 1 and 64 concurrent streams.

    python3 benchmarks/streaming.py            # ~3 min: prints the tables, writes results/streaming.json
                                               # and the "Streaming" section of benchmarks/README.md
    python3 benchmarks/streaming.py --quick    # smoke check (~1 min), results in benchmarks/.work/quick/

What runs (only 127.0.0.1; every server stopped by pid in a `finally`, as in run.py, whose helpers it uses):

- `myelin serve benchmarks/apis/stream` under `taskset -c 0`: a generator `predict` yielding `n` small
  dicts as fast as it can, served as a sync generator (`Predictor`, each `next()` in the thread pool)
  and as an async one (`AsyncPredictor`, generated under .work/apis/); NDJSON.
- The same generators consumed in-process, also under `taskset -c 0` (`--inprocess`): the baseline.
- The client under `taskset -c 1`: this file's own HTTP/1.1 client (`--client`, asyncio with uvloop, in
  the runtime's .venv). Per item at c=1: one connection streams `n=20000` items, several times; time from
  the request to the last byte, divided by `n`. At c=64: 64 connections each stream 2,000 items at once;
  the run's wall time (requests sent → last byte of the last stream) divided by the 128,000 items. Time to first item: `c` connections each open streams of 10
  items back to back for `--duration` seconds; time from sending a request to the first item's bytes.
- For scale, the same client against `myelin serve benchmarks/apis/trivial` (one JSON response per
  request): time to the response body.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run  # noqa: E402 - the harness's helpers: Server, Running, free_port, log, ...

STREAM_API = BENCH / "apis" / "stream"
TRIVIAL_API = BENCH / "apis" / "trivial"
ITEMS_N = 20_000       # items of the one stream at c=1
ITEMS_N_MANY = 2_000   # items of each of the streams at c>1 (64 × 2,000 = 128,000 items per run)
TTFI_N = 10
TARGET_US = 50.0       # issue 20: serving adds at most 50 µs per item over the in-process generator


# ------------------------------------------------------------------------------------------ client side
def request(path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {run.HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def one(reader, writer, req: bytes) -> tuple[float, float, int]:
    """Send one request; (seconds to the first body bytes, seconds to the last, body bytes)."""
    start = time.perf_counter()
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    headers = head.lower()
    if b"transfer-encoding: chunked" in headers:
        size_line = await reader.readuntil(b"\r\n")
        if int(size_line.split(b";")[0], 16) == 0:  # an empty stream
            await reader.readuntil(b"\r\n")
            now = time.perf_counter()
            return now - start, now - start, 0
        first = time.perf_counter()
        data = size_line
        # Read what comes without parsing each chunk: the stream ends with the zero-size chunk.
        while not data.endswith(b"\r\n0\r\n\r\n"):
            data = data[-8:] + await reader.read(1 << 16)
        return first - start, time.perf_counter() - start, 0
    length = int(headers.split(b"content-length:")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    now = time.perf_counter()
    return now - start, now - start, length


async def client_items(port: int, path: str, n: int, runs: int, conns: int = 1) -> dict:
    """`conns` connections each stream `n` items at once, `runs` times: per item = the run's wall time (from
    sending the requests to the last byte of the last stream) / (conns × n). At conns=1 that is one stream."""
    opened = [await asyncio.open_connection(run.HOST, port) for _ in range(conns)]
    req = request(path, json.dumps({"n": n}).encode())
    await asyncio.gather(*(one(r, w, req) for r, w in opened))  # warm-up
    per_item: list[float] = []
    for _ in range(runs):
        start = time.perf_counter()
        await asyncio.gather(*(one(r, w, req) for r, w in opened))
        per_item.append((time.perf_counter() - start) / (conns * n) * 1e6)
    for _, w in opened:
        w.close()
    return {"per_item_us": per_item}


async def client_ttfi(port: int, path: str, body: bytes, conns: int, seconds: float, warmup: float) -> dict:
    req = request(path, body)
    firsts: list[float] = []
    totals: list[float] = []
    measuring = False

    async def loop_one(stop_at: float) -> None:
        reader, writer = await asyncio.open_connection(run.HOST, port)
        while time.perf_counter() < stop_at:
            first, total, _ = await one(reader, writer, req)
            if measuring:
                firsts.append(first)
                totals.append(total)
        writer.close()

    now = time.perf_counter()
    if warmup:
        await asyncio.gather(*(loop_one(now + warmup) for _ in range(conns)))
    measuring = True
    start = time.perf_counter()
    await asyncio.gather(*(loop_one(start + seconds) for _ in range(conns)))
    elapsed = time.perf_counter() - start
    firsts.sort()
    return {"streams": len(firsts), "per_s": len(firsts) / elapsed,
            "p50_ms": firsts[len(firsts) // 2] * 1e3, "p99_ms": firsts[min(len(firsts) - 1, int(len(firsts) * 0.99))] * 1e3,
            "total_p50_ms": sorted(totals)[len(totals) // 2] * 1e3}


def inprocess(kind: str, n: int, runs: int) -> dict:
    """Consume the benchmark's generator in this process: seconds per item, no server."""
    sys.path.insert(0, str(STREAM_API))
    import predictor  # noqa: PLC0415

    instance = (predictor.AsyncPredictor if kind == "async" else predictor.Predictor)({})

    async def drain_async() -> None:
        async for _ in instance.predict({"n": n}):
            pass

    def once() -> float:
        start = time.perf_counter()
        if kind == "async":
            asyncio.run(drain_async())
        else:
            for _ in instance.predict({"n": n}):
                pass
        return time.perf_counter() - start

    once()
    return {"per_item_us": [once() / n * 1e6 for _ in range(runs)]}


def client_main(args) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if args.client == "items":
        out = asyncio.run(client_items(args.port, args.path, args.n, args.runs, args.conns))
    elif args.client == "inprocess":
        out = inprocess(args.kind, args.n, args.runs)
    else:
        body = json.dumps({"n": args.n}).encode() if args.path != "/trivial" else b"{}"
        out = asyncio.run(client_ttfi(args.port, args.path, body, args.conns, args.duration, args.warmup))
    print(json.dumps(out))


# ------------------------------------------------------------------------------------------ orchestration

def pinned(cpu: str, *argv: str) -> dict:
    cmd = ["taskset", "-c", cpu, str(run.MAIN_PY), str(Path(__file__).resolve()), *argv]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, **run.THREAD_ENV})
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def async_api() -> Path:
    """benchmarks/apis/stream served as an async generator: the same files, api.yaml with AsyncPredictor."""
    dst = run.WORK / "apis" / "stream-async"
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    (dst / "predictor.py").symlink_to(STREAM_API / "predictor.py")
    text = (STREAM_API / "api.yaml").read_text().replace("class_name: Predictor", "class_name: AsyncPredictor")
    (dst / "api.yaml").write_text("# generated by benchmarks/streaming.py\n" + text)
    return dst


def serve(name: str, folder: Path, path: str):
    server = run.Server(name, name, "streaming", "myelin", "main",
                        lambda port: [str(run.MYELIN), "serve", str(folder), "--port", str(port), "--host", run.HOST],
                        path, b"{}", ready_path="/readyz")
    logfile = run.WORK / "logs" / f"{name}.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    running = run.Running(server, run.free_port(), logfile, {})
    running.wait_ready()
    return running


def measure(args) -> dict:
    results: dict = {"items": {}, "ttfi": {}}
    for kind, folder in (("sync", STREAM_API), ("async", async_api())):
        base = pinned(run.SERVER_CPU, "--client", "inprocess", "--kind", kind, "--n", str(ITEMS_N), "--runs", str(args.runs))
        running = serve(f"stream-{kind}", folder, "/stream")
        try:
            in_us = statistics.median(base["per_item_us"])
            row: dict = {"inprocess_us": in_us, "runs": {"inprocess": base["per_item_us"]}}
            for conns in args.item_concurrency:
                n = ITEMS_N if conns == 1 else ITEMS_N_MANY
                served = pinned(run.LOAD_CPU, "--client", "items", "--port", str(running.port), "--path", "/stream",
                                "--n", str(n), "--runs", str(args.runs if conns == 1 else args.runs_many),
                                "--conns", str(conns))
                http_us = statistics.median(served["per_item_us"])
                row[f"c{conns}"] = {"served_us": http_us, "overhead_us": http_us - in_us, "items_per_stream": n,
                                    "met": http_us - in_us <= TARGET_US, "runs": served["per_item_us"]}
                run.log(f"{kind}: c={conns} {in_us:.3f} µs/item in-process, {http_us:.2f} µs/item served "
                        f"(overhead {http_us - in_us:.2f} µs, target ≤ {TARGET_US:g} µs)")
            results["items"][kind] = row
            for conns in args.concurrency:
                results["ttfi"][f"{kind}/{conns}"] = r = pinned(
                    run.LOAD_CPU, "--client", "ttfi", "--port", str(running.port), "--path", "/stream",
                    "--n", str(TTFI_N), "--conns", str(conns), "--duration", str(args.duration), "--warmup", str(args.warmup))
                run.log(f"{kind}: c={conns} first item p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms, "
                        f"{r['per_s']:.0f} streams/s")
        finally:
            running.stop()
    running = serve("trivial", TRIVIAL_API, "/trivial")
    try:
        for conns in args.concurrency:
            results["ttfi"][f"trivial/{conns}"] = r = pinned(
                run.LOAD_CPU, "--client", "ttfi", "--port", str(running.port), "--path", "/trivial",
                "--conns", str(conns), "--duration", str(args.duration), "--warmup", str(args.warmup))
            run.log(f"trivial: c={conns} response p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms")
    finally:
        running.stop()
    return results


def markdown(meta: dict, res: dict, concurrency: list[int]) -> str:
    ic = meta["item_concurrency"]
    per = "; ".join(f"c={c}: {'one stream' if c == 1 else f'{c} streams at once'} of "
                    f"{ITEMS_N if c == 1 else ITEMS_N_MANY:,} items, median of "
                    f"{meta['runs'] if c == 1 else meta['runs_many']} runs" for c in ic)
    lines = [f"Run {meta['date']} on {meta['cpu']} ({meta['cpus']} CPUs); command: `{meta['command']}`; "
             f"load average {meta['loadavg_start']} at the start, {meta['loadavg_end']} at the end "
             "(1, 5, 15 min; the machine is shared).",
             "Server (and the in-process baseline) pinned to core 0, client to core 1. Per item (" + per + "): the "
             "run's wall time divided by the items it carried; overhead = served − in-process. Time to first item "
             f"over {meta['duration']} s per level of streams of {TTFI_N} items, after a {meta['warmup']} s warm-up.",
             "",
             "| generator | in-process µs/item | " + " | ".join(
                 f"c={c} served µs/item · overhead · ≤ {TARGET_US:g} µs" for c in ic) + " |",
             "|---|---|" + "---|" * len(ic)]
    for kind, r in res["items"].items():
        cells = []
        for c in ic:
            x = r.get(f"c{c}")
            cells.append(f"{x['served_us']:.2f} · {x['overhead_us']:.2f} · {'met' if x['met'] else '**not met**'}"
                         if x else "–")
        lines.append(f"| {kind} | {r['inprocess_us']:.3f} | " + " | ".join(cells) + " |")
    lines += ["", "| server | " + " | ".join(f"c={c} first item p50 · p99 (ms) · streams/s" for c in concurrency) + " |",
              "|---|" + "---|" * len(concurrency)]
    labels = {"sync": "sync generator (10 items)", "async": "async generator (10 items)",
              "trivial": "for scale: trivial predict, one JSON response (time to the body)"}
    for kind, label in labels.items():
        cells = []
        for c in concurrency:
            r = res["ttfi"].get(f"{kind}/{c}")
            per_s = "responses/s" if kind == "trivial" else "streams/s"
            cells.append(f"{r['p50_ms']:.2f} · {r['p99_ms']:.2f} · {r['per_s']:,.0f} {per_s}" if r else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke check: 2 streams per kind, 2 s per level")
    ap.add_argument("--runs", type=int, default=7, help=f"streams of {ITEMS_N} items per kind (default 7)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per time-to-first-item level")
    ap.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds before each level")
    ap.add_argument("--concurrency", default="1,64", help="time-to-first-item levels (default 1,64)")
    ap.add_argument("--item-concurrency", default="1,64", help="per-item levels: streams at once (default 1,64)")
    ap.add_argument("--runs-many", type=int, default=3,
                    help=f"runs of the c>1 per-item levels ({ITEMS_N_MANY} items per stream; default 3)")
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite benchmarks/README.md")
    # internal: the pinned client and in-process runs
    ap.add_argument("--client", choices=["items", "ttfi", "inprocess"], help=argparse.SUPPRESS)
    ap.add_argument("--kind", default="sync", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=TTFI_N, help=argparse.SUPPRESS)
    ap.add_argument("--conns", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.client:
        client_main(args)
        return 0
    if args.quick:
        args.runs, args.runs_many, args.duration, args.warmup = 2, 1, 2.0, 0.5
    args.concurrency = [int(c) for c in str(args.concurrency).split(",")]
    args.item_concurrency = [int(c) for c in str(args.item_concurrency).split(",")]
    meta = run.run_meta("streaming.py", argv, runs=args.runs, runs_many=args.runs_many,
                        item_concurrency=args.item_concurrency, duration=args.duration, warmup=args.warmup)
    results = measure(args)
    meta["loadavg_end"] = run.loadavg()
    run.publish("streaming", run.results_dir(args.quick) / "streaming.json", {"meta": meta, **results},
                markdown(meta, results, args.concurrency), not args.quick and not args.no_readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
