"""Overload at ten times capacity: excess refused with 503 + Retry-After, no 500, bounded memory, quick recovery."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from .helpers import APIS, RssSampler, Tally, outcome_of, rss_kb

N, Q = 2, 4                # tests/reliability/apis/slow: max_concurrency, max_queue_length
BURST = 10 * (N + Q)       # ten times what the server can hold at once
SLEEP_S = 0.3
SERVING_TIMEOUT_S = 10     # slow's serving.timeout


@pytest.mark.solo  # its refusals' latency and the memory peak are measured: alone on the machine
def test_ten_times_capacity(start_server):
    server = start_server("serve", str(APIS / "slow"))
    url = f"{server.base}/slow"
    for _ in range(5):  # warm up the path once, then read the idle RSS
        assert httpx.post(url, json={}, timeout=5).status_code == 200
    time.sleep(0.2)
    idle_kb = rss_kb(server.proc.pid)
    sampler = RssSampler(server.proc.pid)
    sampler.start()

    tally = Tally()
    refused_latency: list[float] = []
    missing_retry_after = []
    barrier = threading.Barrier(BURST)

    clients = [httpx.Client(timeout=30) for _ in range(BURST)]  # built up front: only the requests race

    def one(http: httpx.Client) -> None:
        barrier.wait()
        started = time.monotonic()
        outcome, response = outcome_of(lambda: http.post(url, json={"sleep": SLEEP_S}))
        tally.add(outcome)
        if outcome == 503:
            refused_latency.append(time.monotonic() - started)
            if response.headers.get("retry-after") != "1" or response.json()["error"]["type"] != "overloaded":
                missing_retry_after.append(dict(response.headers))

    threads = [threading.Thread(target=one, args=(c,), daemon=True) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    peak_kb = sampler.stop()
    for c in clients:
        c.close()

    # right after the burst, full service: a normal request is admitted at once
    started = time.monotonic()
    after = httpx.post(url, json={}, timeout=SERVING_TIMEOUT_S)
    after_s = time.monotonic() - started

    refused_latency.sort()
    median = refused_latency[len(refused_latency) // 2] if refused_latency else float("nan")
    print(tally.summary("overload") + f", burst={BURST}, capacity={N}+{Q}, 503 median={median * 1000:.0f}ms "
          f"max={max(refused_latency, default=0) * 1000:.0f}ms, rss idle={idle_kb // 1024}MiB "
          f"peak={peak_kb // 1024}MiB, next request {after.status_code} in {after_s * 1000:.0f}ms")
    assert tally.sent == BURST == tally.answered, tally.counts          # every request answered, none hung
    assert set(tally.counts) <= {200, 503}, tally.counts                 # never a 500
    assert tally.counts[200] >= N + Q                                    # what fits was served
    assert tally.counts[503] >= BURST // 2                               # the excess was refused...
    assert not missing_retry_after, missing_retry_after[:2]              # ...as "overloaded" with Retry-After
    assert max(refused_latency) < SERVING_TIMEOUT_S                      # refusals never waited for a slot
    assert peak_kb < 2 * idle_kb + 50 * 1024, (idle_kb, peak_kb)          # memory bounded
    assert after.status_code == 200
