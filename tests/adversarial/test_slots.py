"""Slots, probes and deadlines against careless predictors and hostile clients (issue 18, items 1 and 4).

Each scenario runs a real `myelin serve` on 127.0.0.1. Every kind of call (plain, batched, streamed
from a sync or an async generator) goes through one request lifecycle (myelin/lifecycle.py), so a
call that hangs past its deadline is seen the same way whatever its kind: it holds its slot, stays in
`myelin_in_flight_requests` and `myelin_stuck_predictions`, `/readyz` says "stuck", and `/healthz`
fails once that lasted `serving.stuck_timeout`.
"""

from __future__ import annotations

import concurrent.futures as cf
import re
import time

import httpx
import pytest

from reliability.helpers import APIS as RELIABILITY_APIS
from reliability.helpers import raw_connect, read_until_closed

from .helpers import APIS, metric, wait_until

TIMEOUT_S = 1.0        # serving.timeout of every API below
STUCK_TIMEOUT_S = 3.0  # serving.stuck_timeout
HANG_S = 6.0           # how long each hung call blocks


def _stream(url: str, payload: dict) -> tuple[int, list[str]]:
    """POST a streaming request and read it to the end: (status, NDJSON lines)."""
    with httpx.stream("POST", url, json=payload, timeout=HANG_S + 5) as r:
        return r.status_code, [line for line in r.iter_lines() if line]


def _post(url: str, payload: dict) -> tuple[int, list[str]]:
    r = httpx.post(url, json=payload, timeout=HANG_S + 5)
    return r.status_code, [r.text]


# (API folder, endpoint, payload that hangs for HANG_S, how to call it, hung calls that fill its call slots)
SCENARIOS = {
    "stream-hangs-before-first-item": (APIS / "hang-stream", "hang-stream", {"hang": "before", "s": HANG_S}, _stream, 2),
    "stream-hangs-after-first-item": (APIS / "hang-stream", "hang-stream", {"hang": "after", "s": HANG_S}, _stream, 2),
    "async-stream-ignores-its-cancellation": (APIS / "hang-async-stream", "hang-async-stream",
                                              {"hang": "after", "s": HANG_S}, _stream, 2),
    "batched-predict-hangs": (APIS / "hang-batched", "hang-batched", {"hang": HANG_S}, _post, 1),
    "plain-sync-predict-hangs": (RELIABILITY_APIS / "faulty", "faulty", None, _post, 2),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_call_hung_past_its_deadline_holds_its_slot_and_every_probe_says_so(start_server, scenario):
    folder, api, payload, call, hung_calls = SCENARIOS[scenario]
    server = start_server("serve", str(folder))
    url = f"{server.base}/{api}"
    if payload is None:  # the reliability suite's faulty API hangs by query parameter
        url += f"?mode=hang&s={HANG_S}"
        payload = {}
    started = time.monotonic()
    with cf.ThreadPoolExecutor(8) as pool:
        hung = [pool.submit(call, url, payload) for _ in range(hung_calls)]
        time.sleep(TIMEOUT_S + 0.5)  # past every hung call's deadline
        with httpx.Client(timeout=5) as http:
            metrics = http.get(f"{server.base}/metrics").text
            counted = (metric(metrics, "myelin_in_flight_requests", api),
                       metric(metrics, "myelin_stuck_predictions", api))
            ready = http.get(f"{server.base}/readyz")
            live_early = http.get(f"{server.base}/healthz").status_code
            # Later requests: queued until their deadline (504) or refused at once (503); none is served.
            later = [pool.submit(call, url, payload) for _ in range(4)]
            later_statuses = sorted(f.result()[0] for f in later)
            while time.monotonic() - started < TIMEOUT_S + STUCK_TIMEOUT_S + 0.5:
                time.sleep(0.1)
            live_late = http.get(f"{server.base}/healthz")
            outcomes = [f.result() for f in hung]
            # The hung calls return: everything comes back.
            deadline = time.monotonic() + 10
            while http.get(f"{server.base}/readyz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            recovered = (http.get(f"{server.base}/readyz").status_code, http.get(f"{server.base}/healthz").status_code)

            def counts() -> tuple[float, float]:
                text = http.get(f"{server.base}/metrics").text
                return metric(text, "myelin_in_flight_requests", api), metric(text, "myelin_stuck_predictions", api)

            wait_until(lambda: counts() == (0, 0), 5)  # ready again once one returned; the other a moment later
            after = counts()
    print(f"\n{scenario}: hung={[(s, lines[:1]) for s, lines in outcomes]}, in_flight/stuck while hung={counted}, "
          f"readyz={ready.status_code} {ready.json()['status']}, healthz early={live_early} late={live_late.status_code},"
          f" later requests={later_statuses}, after={after}, recovered={recovered}")
    for status, lines in outcomes:  # each hung call was answered 504, or its stream ended with a timeout error
        assert status == 504 or (status == 200 and '"timeout"' in lines[-1]), (status, lines)
    assert counted == (hung_calls, hung_calls)
    assert ready.status_code == 503 and ready.json()["status"] == "stuck"
    assert live_early == 200
    assert live_late.status_code == 503 and live_late.json()["error"]["type"] == "stuck"
    assert set(later_statuses) <= {503, 504}, later_statuses
    assert recovered == (200, 200)
    assert after == (0, 0)


def test_a_request_that_cannot_be_admitted_is_refused_before_its_body_is_read(start_server):
    """Every admission place taken by a client still sending its body: the next request is refused with 503 on
    its headers alone, and its connection closed, though it has not sent a byte of its body."""
    server = start_server("serve", str(APIS / "upload"))  # max_concurrency 2, max_queue_length 8
    capacity = 10
    head = (b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-type: application/octet-stream\r\n"
            b"content-length: 1000000\r\n\r\n")
    holders = []
    try:
        for _ in range(capacity):  # each admitted, its body never finished
            sock = raw_connect(server.port)
            sock.sendall(head + b"x" * 1000)
            holders.append(sock)
        time.sleep(0.3)
        metrics = httpx.get(f"{server.base}/metrics", timeout=5).text
        in_flight = metric(metrics, "myelin_in_flight_requests", "upload")
        refused = raw_connect(server.port)
        refused.sendall(head)  # the headers only
        data, _, closed = read_until_closed(refused, 5.0)
        refused.close()
    finally:
        for sock in holders:
            sock.close()
    status_line, _, rest = data.partition(b"\r\n")
    headers = rest.split(b"\r\n\r\n", 1)[0].lower()
    print(f"\nbody admission: in flight while held={in_flight}, refused={status_line!r}, closed={closed}")
    assert in_flight == capacity
    assert status_line == b"HTTP/1.1 503 Service Unavailable", data[:300]
    assert b"retry-after: 1" in headers and b"connection: close" in headers
    assert b'"type":"overloaded"' in data
    assert closed


def test_a_body_that_does_not_fit_the_process_budget_is_refused_before_it_is_read(start_server):
    """MYELIN_MAX_BODY_BYTES_IN_FLIGHT: a declared Content-Length that does not fit what is left is refused at
    once; a chunked body is refused when its chunks pass it; both fit again once the others are read."""
    budget = 4 * 2**20
    server = start_server("serve", str(APIS / "upload"), env={"MYELIN_MAX_BODY_BYTES_IN_FLIGHT": str(budget)})
    url = f"{server.base}/upload"
    head = (b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-type: application/octet-stream\r\n"
            b"content-length: %d\r\n\r\n")
    holder = raw_connect(server.port)
    try:
        holder.sendall(head % (3 * 2**20) + b"x" * 1000)  # reserves 3 MiB of the 4, sends 1000 bytes
        time.sleep(0.3)
        reserved = re.search(r"^myelin_body_bytes_in_flight (\S+)$",
                             httpx.get(f"{server.base}/metrics", timeout=5).text, re.M)
        declared = raw_connect(server.port)
        declared.sendall(head % (2 * 2**20))  # 2 MiB more: does not fit
        data, _, _ = read_until_closed(declared, 5.0)
        declared.close()

        def chunks():
            for _ in range(4):
                yield b"y" * (512 * 1024)

        chunked = httpx.post(url, content=chunks(), headers={"content-type": "application/octet-stream"}, timeout=10)
    finally:
        holder.close()
    time.sleep(0.3)
    fits_again = httpx.post(url, content=b"z" * (3 * 2**20), headers={"content-type": "application/octet-stream"},
                            timeout=10)
    status_line = data.split(b"\r\n", 1)[0]
    print(f"\nbody budget {budget}: declared 2 MiB -> {status_line!r}, chunked 2 MiB -> "
          f"{chunked.status_code}, after -> {fits_again.status_code}")
    assert reserved and float(reserved.group(1)) == 3 * 2**20
    assert data.startswith(b"HTTP/1.1 503 "), data[:300]
    assert b"MYELIN_MAX_BODY_BYTES_IN_FLIGHT" in data
    assert chunked.status_code == 503 and "MYELIN_MAX_BODY_BYTES_IN_FLIGHT" in chunked.json()["error"]["message"]
    assert fits_again.status_code == 200 and fits_again.json() == {"bytes": 3 * 2**20}


def test_an_asyncapi_submit_is_admitted_before_its_body_is_read(start_server, tmp_path):
    """The AsyncAPI front door shares the lifecycle: a submit whose declared body does not fit the process's body
    budget is refused with 503 on its headers, and nothing is stored."""
    server = start_server("serve", str(APIS / "big-result"), env={
        "MYELIN_MAX_BODY_BYTES_IN_FLIGHT": str(2**20), "MYELIN_STATE_DIR": str(tmp_path / "state")})
    head = (b"POST /big-result HTTP/1.1\r\nhost: x\r\ncontent-type: application/octet-stream\r\n"
            b"content-length: %d\r\n\r\n")
    holder = raw_connect(server.port)
    try:
        holder.sendall(head % (800 * 1024) + b"x" * 1000)  # 800 KiB of the 1 MiB reserved, 1000 bytes sent
        time.sleep(0.3)
        refused = raw_connect(server.port)
        refused.sendall(head % (500 * 1024))
        data, _, closed = read_until_closed(refused, 5.0)
        refused.close()
    finally:
        holder.close()
    submitted = re.search(r'^myelin_async_jobs_total{api="big-result",status="submitted"} (\S+)$',
                          httpx.get(f"{server.base}/metrics", timeout=5).text, re.M)
    stored = float(submitted.group(1)) if submitted else None
    status_line = data.split(b"\r\n", 1)[0]
    print(f"\nAsyncAPI submit past the body budget: {status_line!r}, closed={closed}, stored={stored}")
    assert data.startswith(b"HTTP/1.1 503 ") and b"MYELIN_MAX_BODY_BYTES_IN_FLIGHT" in data, data[:300]
    assert closed and stored == 0
