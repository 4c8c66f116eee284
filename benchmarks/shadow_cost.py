#!/usr/bin/env python3
"""What a splitter's shadow costs the APIs it weighs in the cloud: the answering process's CPU per request on the
splitter's path, without and with a shadow to copy to (MYELIN_SHADOW_TARGETS), interleaved rounds.

    .venv/bin/python benchmarks/shadow_cost.py              # 5 rounds of 1,000 sequential requests each
    .venv/bin/python benchmarks/shadow_cost.py --requests 300 --rounds 3

Three `myelin serve` processes on 127.0.0.1 from a trivial API (the shadow; A: aliased only; B: aliased and
copying to the shadow). The CPU is the server's own `process_cpu_seconds_total` before and after each round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import ServerProcess  # noqa: E402

PREDICTOR = "class Predictor:\n    def __init__(self, config):\n        pass\n\n    def predict(self, payload):\n" \
            "        return {'ok': True}\n"


def cpu_seconds(server: ServerProcess) -> float:
    text = httpx.get(server.base + "/metrics", timeout=10).text
    return next(float(line.split()[1]) for line in text.splitlines() if line.startswith("process_cpu_seconds_total"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=1000, help="sequential requests per server and round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="shadow-cost-"))
    for name in ("live", "candidate"):
        folder = tmp / "apis" / name
        folder.mkdir(parents=True)
        (folder / "api.yaml").write_text(f"name: {name}\n")
        (folder / "predictor.py").write_text(PREDICTOR)
    servers: list[ServerProcess] = []
    try:
        shadow = ServerProcess(["serve", str(tmp / "apis" / "candidate")], tmp)
        servers.append(shadow)
        plain = ServerProcess(["serve", str(tmp / "apis" / "live")], tmp, {"MYELIN_ENDPOINT_ALIASES": "s=/s"})
        servers.append(plain)
        copying = ServerProcess(["serve", str(tmp / "apis" / "live")], tmp, {
            "MYELIN_ENDPOINT_ALIASES": "s=/s", "MYELIN_SHADOW_TARGETS": f"s={shadow.base}/candidate;api=candidate"})
        servers.append(copying)
        for server in servers:
            server.wait_ready()
        cpu: dict[str, list[float]] = {"without a shadow": [], "with a shadow": []}
        latency: dict[str, list[float]] = {label: [] for label in cpu}
        with httpx.Client() as client:
            for rnd in range(args.rounds):
                pair = [("without a shadow", plain), ("with a shadow", copying)]
                for label, server in pair if rnd % 2 == 0 else pair[::-1]:
                    before = cpu_seconds(server)
                    for i in range(args.requests):
                        start = time.perf_counter()
                        client.post(server.base + "/s", json={"n": i}).raise_for_status()
                        latency[label].append(time.perf_counter() - start)
                    time.sleep(1.0)  # the last copies answered
                    cpu[label].append((cpu_seconds(server) - before) / args.requests * 1e3)
        for label in cpu:
            print(f"{label}: CPU ms/request {statistics.median(cpu[label]):.3f} (rounds "
                  f"{', '.join(f'{x:.3f}' for x in cpu[label])}); client p50 "
                  f"{statistics.median(latency[label]) * 1e3:.2f} ms")
        text = httpx.get(copying.base + "/metrics", timeout=10).text
        print(*(line for line in text.splitlines() if line.startswith("myelin_shadow")), sep="\n")
    finally:
        for server in servers:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
