"""Models from S3: download throughput and time-to-ready for a 1 GiB model, cold and cached.

    .venv/bin/python benchmarks/model_download.py              # 3 cold + 3 cached runs, 1 GiB
    .venv/bin/python benchmarks/model_download.py --size-mib 256 --runs 1 --no-readme   # quick look

S3 is moto in server mode on 127.0.0.1 (tests/models/moto_server.py with --seek-ranges, so a
ranged GET reads only its range instead of moto's whole-object read per request), pinned to
core 1; `myelin serve` of benchmarks/apis/model-dir (whose __init__ only lists model_dir) is
pinned to core 0, its cache on the local disk. This is loopback through one CPU core of a
Python server: it measures the client (transfer, verification, cache), not S3's throughput,
which from inside a region is typically several hundred MB/s to GB/s per instance.

Per run: the time from starting the process to `/readyz` 200, and from the log lines the
download (`model downloaded`: transfer only) and the whole fetch (`model ready`: listing,
download, MD5 verification of every part, rename). Cached runs restart with the same cache.
A run with `model_uri` pointing at a local folder gives the server's own start-up time. After
each cold run, the baseline: a plain boto3 `s3.download_file` of the same object from the same moto
(boto3's default TransferConfig: 8 MiB parts on 10 threads), in its own process on core 0, the call
alone timed; the ratio of the two transfer rates (myelin/boto3, target >= 0.8) is printed.
Results: benchmarks/results/models.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from models.moto_s3 import AWS_VARS, MotoS3, upload_large  # noqa: E402
from run import loadavg  # noqa: E402 - the benchmarks' shared helpers (benchmarks/ is this script's folder)

API = ROOT / "benchmarks" / "apis" / "model-dir"
WORK = ROOT / "benchmarks" / ".work" / "models"
MiB = 2**20



def taskset(core: int) -> list[str]:
    return ["taskset", "-c", str(core)] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def serve(moto: MotoS3, uri: str, cache: Path, log: Path) -> dict:
    """Start myelin serve, wait for readiness; the timings and the fetch's log lines."""
    port = 18000 + os.getpid() % 1000
    env = {k: v for k, v in os.environ.items() if k not in AWS_VARS}
    env.update(moto.env(MYELIN_API_SPEC=json.dumps({"name": "model-dir", "predictor": {"model_uri": uri}}),
                        MYELIN_MODEL_CACHE=str(cache), MYELIN_MODEL_CACHE_MAX_BYTES="8Gi", PYTHONUNBUFFERED="1"))
    with open(log, "wb") as out:
        start = time.monotonic()
        proc = subprocess.Popen(taskset(0) + [sys.executable, "-m", "myelin.cli", "serve", str(API), "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"server exited: {log.read_text()[-2000:]}")
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() - start > 600:
                    raise SystemExit("not ready in 600 s")
                time.sleep(0.01)
            ready_s = time.monotonic() - start
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    lines = [json.loads(l) for l in log.read_text().splitlines() if l.startswith("{")]
    by = {l.get("message"): l for l in lines}
    result = {"start_to_ready_s": round(ready_s, 3)}
    if "model downloaded" in by:
        result.update(download_s=by["model downloaded"]["seconds"], download_rate_mib_s=round(by["model downloaded"]["rate"] / MiB, 1),
                      progress_lines=sum(1 for l in lines if l.get("message") == "model download progress"))
    if "model ready" in by:
        result.update(fetch_s=by["model ready"]["seconds"], downloaded=by["model ready"]["downloaded"])
    return result


BOTO3_DOWNLOAD = """
import json, sys, time
import boto3
endpoint, bucket, key, dest = sys.argv[1:5]
s3 = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1")
start = time.monotonic()
s3.download_file(bucket, key, dest)  # boto3's default TransferConfig: 8 MiB parts, 10 threads
print(json.dumps({"seconds": time.monotonic() - start}))
"""


def boto3_download(moto: MotoS3, bucket: str, key: str, size: int, dest: Path) -> dict:
    """The plain boto3 baseline: `s3.download_file` of the same object from the same moto, with boto3's default
    transfer configuration, in its own process on core 0 (where `myelin serve` runs); the call alone is timed
    (not the import or the client)."""
    env = {k: v for k, v in os.environ.items() if k not in AWS_VARS}
    env.update(moto.env())
    out = subprocess.run(taskset(0) + [sys.executable, "-c", BOTO3_DOWNLOAD, moto.endpoint, bucket, key, str(dest)],
                         capture_output=True, text=True, env=env, timeout=1200)
    if out.returncode:
        raise SystemExit(f"boto3 download failed: {out.stderr[-2000:]}")
    if dest.stat().st_size != size:
        raise SystemExit(f"boto3 download wrote {dest.stat().st_size} bytes, expected {size}")
    dest.unlink()
    seconds = json.loads(out.stdout.strip().splitlines()[-1])["seconds"]
    return {"download_s": round(seconds, 3), "download_rate_mib_s": round(size / seconds / MiB, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite the table in benchmarks/README.md")
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    size = args.size_mib * MiB
    # moto on core 1, started under taskset by wrapping the interpreter.
    moto = MotoS3(WORK, seek_ranges=True)
    if taskset(1):
        subprocess.run(["taskset", "-pc", "1", str(moto.proc.pid)], check=True, capture_output=True)
    results: dict = {"size_bytes": size, "cpu": os.cpu_count(), "cold": [], "cached": [], "local": [], "boto3": [],
                     "loadavg_start": loadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "command": " ".join(["python benchmarks/model_download.py", *sys.argv[1:]])}
    try:
        s3 = moto.client()
        s3.create_bucket(Bucket="bench")
        t = time.monotonic()
        upload_large(s3, "bench", "model/weights.bin", size, seed=7)  # multipart, 8 MiB parts (the AWS CLI's default)
        results["upload_s"] = round(time.monotonic() - t, 1)
        uri = "s3://bench/model/"
        for run in range(args.runs):
            cache = WORK / f"cache-{run}"
            results["cold"].append(serve(moto, uri, cache, WORK / f"cold-{run}.log"))
            results["boto3"].append(boto3_download(moto, "bench", "model/weights.bin", size, WORK / "boto3.bin"))
            results["cached"].append(serve(moto, uri, cache, WORK / f"cached-{run}.log"))
            shutil.rmtree(cache)
            results["local"].append(serve(moto, str(API / "model"), WORK / "unused", WORK / f"local-{run}.log"))
            print(f"run {run + 1}: cold {results['cold'][-1]}, cached {results['cached'][-1]}, "
                  f"local {results['local'][-1]}, boto3 {results['boto3'][-1]}", file=sys.stderr, flush=True)
    finally:
        moto.stop()
    results["loadavg_end"] = loadavg()
    ratios = [c["download_rate_mib_s"] / b["download_rate_mib_s"] for c, b in zip(results["cold"], results["boto3"])]
    results["myelin_over_boto3"] = {"per_run": [round(r, 3) for r in ratios], "median": round(statistics.median(ratios), 3)}
    out = ROOT / "benchmarks" / "results" / "models.json"
    out.write_text(json.dumps(results, indent=1) + "\n")

    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in results[kind])

    gib = size / 2**30
    ratio = results["myelin_over_boto3"]["median"]
    md = [
        f"Run {results['date']} on {os.cpu_count()} CPUs; command: `{results['command']}`; load average "
        f"{results['loadavg_start']} at the start, {results['loadavg_end']} at the end (1, 5, 15 min; the machine is "
        f"shared). Medians of {args.runs} run(s) of each, interleaved (raw: `results/models.json`); upload "
        f"{results['upload_s']} s.",
        "",
        f"| {gib:g} GiB model, moto on loopback | cold (download) | cached (restart) | local folder |",
        "|---|---|---|---|",
        f"| process start → `/readyz` 200 | {med('cold', 'start_to_ready_s'):.2f} s | "
        f"{med('cached', 'start_to_ready_s'):.2f} s | {med('local', 'start_to_ready_s'):.2f} s |",
        f"| fetch (`model ready`: list, download, verify) | {med('cold', 'fetch_s'):.2f} s | "
        f"{med('cached', 'fetch_s'):.3f} s | — |",
        f"| transfer alone (`model downloaded`) | {med('cold', 'download_s'):.2f} s = "
        f"{med('cold', 'download_rate_mib_s'):.0f} MiB/s | none | — |",
        f"| for comparison: plain boto3 `s3.download_file` (default TransferConfig), same object, same moto | "
        f"{med('boto3', 'download_s'):.2f} s = {med('boto3', 'download_rate_mib_s'):.0f} MiB/s | — | — |",
        "",
        f"Transfer throughput myelin ÷ boto3: **{ratio:.2f}** (median of the per-run ratios "
        f"{', '.join(f'{r:.2f}' for r in results['myelin_over_boto3']['per_run'])}); target ≥ 0.8: "
        f"**{'met' if ratio >= 0.8 else 'not met'}**.",
    ]
    table = "\n".join(md) + "\n"
    print(table)
    print(f"results in {out.relative_to(ROOT)}")
    if not args.no_readme:
        readme = ROOT / "benchmarks" / "README.md"
        text = readme.read_text()
        start, end = "<!-- models:start -->", "<!-- models:end -->"
        if start in text and end in text:
            head, rest = text.split(start, 1)
            readme.write_text(head + f"{start}\n\n{table}\n{end}" + rest.split(end, 1)[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
