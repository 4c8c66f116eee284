"""A predictor that kills its worker (os._exit) under a stream, with processes: 2."""

from __future__ import annotations

import re
import threading
import time

import httpx

from .helpers import RUNTIME_APIS, Tally, outcome_of

CLIENTS = 3
CLIENT_TIMEOUT_S = 8
CRASHES = 3
MAX_REQUESTS = 3000  # per client


def _ready_processes(base: str) -> float | None:
    try:
        text = httpx.get(f"{base}/metrics", timeout=2).text
    except httpx.HTTPError:
        return None
    m = re.search(r'^myelin_ready_processes\{api="crashy"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def _pids(base: str, n: int = 30) -> set[int]:
    pids = set()
    for _ in range(n):  # a fresh connection each time, so the kernel spreads them over the workers
        outcome, response = outcome_of(lambda: httpx.post(f"{base}/crashy", json={}, timeout=5))
        if outcome == 200:
            pids.add(response.json()["pid"])
    return pids


def test_worker_crashes_under_a_stream(start_server):
    server = start_server("serve", str(RUNTIME_APIS / "crashy"))
    server.wait_workers("crashy", 2)
    base = server.base
    assert len(_pids(base)) == 2
    stream, crashes = Tally(), Tally()
    durations: list[float] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=CLIENT_TIMEOUT_S) as http:
            for _ in range(MAX_REQUESTS):
                if stop.is_set():
                    return
                started = time.monotonic()
                outcome, _ = outcome_of(lambda: http.post(f"{base}/crashy", json={"sleep": 0.01}))
                durations.append(time.monotonic() - started)
                stream.add(outcome)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    dips = []
    try:
        for _ in range(CRASHES):
            time.sleep(0.5)
            started = time.monotonic()
            outcome, _ = outcome_of(lambda: httpx.post(f"{base}/crashy", json={"crash": True}, timeout=CLIENT_TIMEOUT_S))
            crashes.add(outcome)
            durations.append(time.monotonic() - started)
            # readiness of the replica: the dead worker stops counting, its replacement counts once loaded
            low, deadline = 2.0, time.monotonic() + 20
            while time.monotonic() < deadline:
                value = _ready_processes(base)
                if value is not None:
                    low = min(low, value)
                    if low < 2 and value == 2:
                        break
                time.sleep(0.05)
            dips.append(low)
    finally:
        stop.set()
        for t in threads:
            t.join(CLIENT_TIMEOUT_S + 5)
    pids_after = _pids(base)
    ready_after = _ready_processes(base)
    died = server.stdout().count("worker died; starting a replacement")

    print(stream.summary("crash, stream") + " | " + crashes.summary("crash requests")
          + f" | workers died={died}, ready_processes low={dips}, after={ready_after}, "
          f"pids after={len(pids_after)}, slowest request={max(durations):.2f}s")
    assert stream.counts["timeout"] == 0 and crashes.counts["timeout"] == 0  # nothing hung to the client timeout
    assert max(durations) < CLIENT_TIMEOUT_S
    assert set(crashes.counts) <= {"RemoteProtocolError", "ReadError", 500, 502, 503}, crashes.counts  # failed fast
    assert stream.counts[200] > 0 and stream.counts[500] == 0
    failed = stream.sent - stream.counts[200]
    assert failed <= 2 * CLIENTS * CRASHES, stream.counts  # only requests on the dying worker's connections
    assert died == CRASHES
    assert any(d < 2 for d in dips), dips     # readiness reflected a missing worker...
    assert ready_after == 2.0                 # ...and the replacement
    assert len(pids_after) == 2               # back to two workers
    assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200
