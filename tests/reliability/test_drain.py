"""Drain under a stream: what is in flight at SIGTERM completes 200, later requests are refused, exit 0."""

from __future__ import annotations

import signal
import threading
import time

import httpx

from .helpers import APIS, Tally, outcome_of

CLIENTS = 4          # slow: max_concurrency 2 + max_queue_length 4, so all four are admitted
SLEEP_S = 0.4        # each prediction; a client's request lasts 0.4-0.8 s
MAX_REQUESTS = 50    # per client
DRAIN_TIMEOUT_S = 5  # tests/reliability/apis/slow/api.yaml serving.drain_timeout


def test_sigterm_under_a_stream(start_server):
    server = start_server("serve", str(APIS / "slow"))
    url = f"{server.base}/slow"
    before, after = Tally(), Tally()  # requests started before / after SIGTERM
    current: dict[int, float | None] = {}
    signalled_at: list[float] = []
    refusals: list[str] = []
    finished_in_drain: list[str | None] = []  # Connection header of 200s for requests in flight at SIGTERM
    sequences: dict[int, list[object]] = {i: [] for i in range(CLIENTS)}  # each client's outcomes after SIGTERM
    lock = threading.Lock()

    def client(i: int) -> None:
        with httpx.Client(timeout=15) as http:
            for _ in range(MAX_REQUESTS):
                with lock:
                    started = time.monotonic()
                    current[i] = started
                    pre = not signalled_at
                outcome, response = outcome_of(lambda: http.post(url, json={"sleep": SLEEP_S}))
                with lock:
                    current[i] = None
                (before if pre else after).add(outcome)
                if pre and outcome == 200:
                    with lock:
                        if signalled_at:
                            finished_in_drain.append(response.headers.get("connection"))
                if not pre:
                    sequences[i].append(outcome)
                    if outcome == 503:
                        refusals.append((response.json()["error"]["type"], response.headers.get("retry-after")))
                    if outcome == "refused":  # the process has exited: nothing more to learn
                        return
                    time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(1.2)  # a steady stream
    # Signal when every client has a request that has surely reached the server (sent > 100 ms ago).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with lock:
            now = time.monotonic()
            if all(current.get(i) is not None and now - current[i] > 0.1 for i in range(CLIENTS)):
                signalled_at.append(now)
                server.signal(signal.SIGTERM)
                break
        time.sleep(0.005)
    assert signalled_at, "clients never all in flight at once"
    code = server.proc.wait(timeout=DRAIN_TIMEOUT_S + 5)
    exited_after = time.monotonic() - signalled_at[0]
    for t in threads:
        t.join(15)

    print(before.summary("drain, before SIGTERM") + " | " + after.summary("after SIGTERM")
          + f" | exit={code} in {exited_after:.2f}s")
    assert before.sent == before.counts[200] and before.sent >= CLIENTS  # nothing in flight was lost
    # Later ones are refused cleanly: 503 while draining, then the port is closed. One exception no server can
    # avoid: a connection the kernel completed into the listening socket's queue in the instant before the process
    # closed it is reset (ReadError), never read. So a ReadError must be that client's last request to the live
    # process: the very next one finds the port closed.
    assert set(after.counts) <= {503, "refused", "ReadError"}, after.counts
    for outcomes in sequences.values():
        for at, outcome in enumerate(outcomes):
            if outcome == "ReadError":
                assert outcomes[at + 1:] == ["refused"], outcomes
    assert after.counts[503] + after.counts["refused"] >= CLIENTS
    assert set(refusals) <= {("shutting_down", "1")}, set(refusals)
    # Answers given while draining close their connection, so no client reuses one the server is about to
    # close (a request sent on it at that moment would be lost in transit, not refused).
    assert finished_in_drain and set(finished_in_drain) == {"close"}, finished_in_drain
    assert code == 0 and exited_after < DRAIN_TIMEOUT_S + 3  # inside the grace period (+ uvicorn's final close)
