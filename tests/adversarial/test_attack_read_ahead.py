"""Attacks on a sync generator's read-ahead (streaming.ThreadedGenerator) by hostile clients and careless
predictors, on a real `myelin serve` on 127.0.0.1 (tests/adversarial/apis/read-ahead, 2 threads), stopped by pid.

Found and fixed:
- an item whose encoding raises something other than TypeError/ValueError (a str subclass's `encode()`, a
  MemoryError) escaped the pool thread's `_produce`: the stream hung until serving.timeout and ended with a
  `timeout` error, the generator was never closed (its `finally` never ran) and its slot stayed taken forever (in
  flight and stuck). Before the read-ahead the loop encoded items and such an error ended the stream with a 500
  `predictor_failure`, logged; it does again.
- fast streams did not share the pool fairly: a thread stopped reading ahead whenever another call was queued,
  so the producer that ran while nothing was queued read 64 items a turn and the others, always finding it queued,
  one. With 3 fast streams on 2 threads, one stream got 98% of the items (1,580 / 1,516 / 96,913) and the others
  half their rate before the read-ahead. Now a thread reads ahead in turns of READ_AHEAD_TURN (0.2 ms): then,
  if a call is queued, it queues its producer behind that call (equal turns for every stream; a waiting call
  waits for a turn or the step under way, not for a full read-ahead).
- a sync generator that raises asyncio.CancelledError itself ended its stream as if the server were stopping
  (`shutting_down`, "the server is shutting down", logged 499, no traceback); a plain predict doing the same is a
  predictor failure. Now it is one in a stream too (500 `predictor_failure`, logged).

Held (guards): a generator blocked in next() after its reader left is a stuck call until it returns, then
closed once and its slot freed; random disconnects (FIN and RST, SSE and NDJSON) of fast, slow, yield-in-finally and
raise-in-finally generators free every slot and run each `finally` exactly once.
"""

from __future__ import annotations

import asyncio
import json
import random
import select
import socket
import struct
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import ServerProcess
from myelin import streaming
from myelin.handoff import Handoff
from myelin.streaming import _END, SSE_FRAMING, ThreadedGenerator
from tests.adversarial.helpers import APIS, metric, wait_for

API = "read-ahead"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("read-ahead")
    proc = ServerProcess(["serve", str(APIS / API)], root)
    proc.wait_ready()
    yield proc
    proc.stop()


def _request(body: dict, accept: str | None = None) -> bytes:
    data = json.dumps(body).encode()
    head = (f"POST /{API} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            + (f"accept: {accept}\r\n" if accept else "") + f"content-length: {len(data)}\r\n\r\n")
    return head.encode() + data


def _all_free(server) -> bool:
    text = httpx.get(server.base + "/metrics", timeout=5).text
    return (metric(text, "myelin_in_flight_requests", API) == 0.0
            and metric(text, "myelin_stuck_predictions", API) == 0.0
            and httpx.get(server.base + "/readyz", timeout=5).status_code == 200)


def _closed_tags(marker: Path) -> list[str]:
    return marker.read_text().split() if marker.exists() else []


# ----------------------------------------------------------------------------------------- found
def test_an_item_whose_encoding_raises_anything_ends_the_stream_and_frees_the_slot(server, tmp_path):
    marker = tmp_path / "closed"
    body = {"mode": "badencode", "n": 3, "tag": "bad", "marker": str(marker)}
    r = httpx.post(f"{server.base}/{API}", json=body, headers={"accept": "text/event-stream"}, timeout=10)
    events = [e for e in r.text.split("\n\n") if e]
    request_id = r.headers["x-request-id"]
    assert events[:3] == [f'data: {{"i":{i}}}' for i in range(3)]
    assert events[3:] == ["event: error\ndata: " + json.dumps({"error": {
        "type": "predictor_failure", "message": "the predictor failed; see the server log",
        "request_id": request_id}}, separators=(",", ":"))], r.text
    wait_for(lambda: _all_free(server), 10, "the slot free again (in flight 0, stuck 0, /readyz 200)")
    wait_for(lambda: _closed_tags(marker) == ["bad"], 10, "the generator closed once")
    line = wait_for(lambda: next((e for e in server.log_lines() if e.get("request_id") == request_id
                                  and e.get("message") == "predict raised"), None), 10, "the error logged")
    assert "LookupError: no codec for this item" in line["error"]


def test_an_encode_error_of_any_type_comes_after_the_items_before_it():
    """The same, on ThreadedGenerator alone: a MemoryError from the framing ends the items, in order."""
    def encode(item):
        if item == 3:
            raise MemoryError("no room for this item")
        return SSE_FRAMING.item(item)

    closed: list = []

    async def main():
        pool = Handoff(1)
        items = ThreadedGenerator((i for i in range(10)), pool, asyncio.get_running_loop(), closed.append, encode)
        got = []
        with pytest.raises(MemoryError):
            while (batch := await items.take()) is not _END:
                got.extend(batch)
        await items.close()
        deadline = time.monotonic() + 10
        while not closed:
            assert time.monotonic() < deadline, "the generator closed"
            await asyncio.sleep(0.001)
        pool.shutdown()
        return got

    got = asyncio.run(asyncio.wait_for(main(), 10))
    assert got == [SSE_FRAMING.item(i) for i in range(3)] and closed == [None]


def test_fast_streams_share_the_threads_fairly(server):
    """3 endless fast streams on 2 threads, read alike by one select() loop: each gets a fair share of the items."""
    socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    try:
        for sock in socks:
            sock.sendall(_request({"mode": "fast"}))
        counts = {sock: 0 for sock in socks}
        while sum(counts.values()) < 60_000:
            ready, _, _ = select.select(socks, [], [], 10)
            assert ready, f"no stream sent anything for 10 s: {list(counts.values())}"
            for sock in ready:
                counts[sock] += sock.recv(1 << 16).count(b"}\n")
    finally:
        for sock in socks:
            sock.close()
    shares = sorted(counts.values())
    print(f"items per stream after 60,000 in all: {shares}")
    assert shares[0] >= 0.3 * shares[-1], shares  # before: [1580, 1516, 96913]
    wait_for(lambda: _all_free(server), 10, "the slots free again")


def test_a_generator_raising_cancelled_error_is_a_predictor_failure(server, tmp_path):
    marker = tmp_path / "closed"
    body = {"mode": "cancelled", "n": 2, "tag": "cancelled", "marker": str(marker)}
    r = httpx.post(f"{server.base}/{API}", json=body, timeout=10)
    request_id = r.headers["x-request-id"]
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert lines == [{"i": 0}, {"i": 1}, {"error": {"type": "predictor_failure", "message":
                     "the predictor failed; see the server log", "request_id": request_id}}]
    entry = wait_for(lambda: next((e for e in server.log_lines() if e.get("request_id") == request_id
                                   and "status" in e), None), 10, "the request's log line")
    assert (entry["status"], entry["error"]) == (500, "predictor_failure")
    assert any(e.get("request_id") == request_id and e.get("message") == "predict raised"
               and "CancelledError" in e["error"] for e in server.log_lines())
    # Before the first item: the ordinary JSON 500.
    r = httpx.post(f"{server.base}/{API}", json={"mode": "cancelled", "n": 0}, timeout=10)
    assert r.status_code == 500 and r.json()["error"]["type"] == "predictor_failure", r.text
    wait_for(lambda: _all_free(server), 10, "the slot free again")
    assert _closed_tags(marker) == ["cancelled"]


# ----------------------------------------------------------------------------------------- held
def test_random_disconnects_free_every_slot_and_close_each_generator_once(server, tmp_path):
    rnd = random.Random(7)
    marker = tmp_path / "closed"
    tags: list[str] = []
    errors: list[BaseException] = []

    def client(k: int) -> None:
        mode = rnd.choice(["fast", "fast", "yield_in_finally", "raise_in_finally"])
        tag = f"{mode}-{k}"
        tags.append(tag)
        body = {"mode": mode, "tag": tag, "marker": str(marker), "gap": rnd.choice([0, 0, 0.002])}
        want, chunk = rnd.randint(0, 100_000), rnd.choice([1, 100, 65536])
        rst = rnd.random() < 0.5
        accept = rnd.choice([None, "text/event-stream"])
        try:
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.settimeout(5)
            sock.sendall(_request(body, accept))
            got = 0
            while got < want:
                data = sock.recv(chunk)
                if not data:
                    break
                got += len(data)
            if rst:  # SO_LINGER 0: close with a reset, as a killed client's kernel may
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        except BaseException as err:  # noqa: BLE001 - reported by the test
            errors.append(err)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(12)]
    for thread in threads:
        thread.start()
        time.sleep(rnd.random() * 0.02)
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    wait_for(lambda: _all_free(server), 15, "every slot free (in flight 0, stuck 0, /readyz 200)")
    wait_for(lambda: sorted(_closed_tags(marker)) == sorted(tags), 15,
             f"each generator's finally run once ({sorted(tags)})")


def test_a_generator_blocked_after_its_reader_left_is_stuck_until_it_returns_then_closed_once(server, tmp_path):
    marker, release = tmp_path / "closed", tmp_path / "release"
    body = {"mode": "block", "n": 5, "tag": "blocked", "marker": str(marker), "release": str(release)}
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(_request(body))
    sock.settimeout(5)
    seen = b""
    while seen.count(b"}\n") < 5:
        seen += sock.recv(65536)
    sock.close()  # the reader leaves while the generator is blocked in its sixth next()

    def stuck() -> bool:
        text = httpx.get(server.base + "/metrics", timeout=5).text
        return (metric(text, "myelin_stuck_predictions", API) == 1.0
                and metric(text, "myelin_in_flight_requests", API) == 1.0)

    wait_for(stuck, 10, "the blocked step counted in flight and stuck past serving.timeout (2 s)")
    assert _closed_tags(marker) == []  # a running next() cannot be interrupted
    release.touch()
    wait_for(lambda: _all_free(server), 10, "the slot free once the step returned")
    wait_for(lambda: _closed_tags(marker) == ["blocked"], 10, "closed once, after the step")


def test_a_call_waiting_for_the_thread_gets_it_within_a_turn_not_after_a_full_read_ahead():
    """Handoff(1): a stream reads ahead (steps of ~20 µs: 64 items take longer than a 0.2 ms turn); a call queued
    meanwhile runs once the turn is over, before the read-ahead is full (steps run slower on a loaded machine,
    which only ends the turn sooner)."""
    produced = [0]

    def steps():
        i = 0
        while True:
            end = time.perf_counter() + 20e-6
            while time.perf_counter() < end:
                pass
            produced[0] += 1
            yield i
            i += 1

    async def main():
        pool = Handoff(1)
        loop = asyncio.get_running_loop()
        items = ThreadedGenerator(steps(), pool, loop, lambda error: None, SSE_FRAMING.item)
        first = await items.take()  # the producer goes on reading ahead in the only thread
        seen_at, _ = pool.start(loop, lambda: produced[0])  # a call waiting for that thread
        seen = await seen_at
        await items.close()
        pool.shutdown()
        return len(first), seen

    taken, seen = asyncio.run(asyncio.wait_for(main(), 10))
    assert seen < taken + streaming.READ_AHEAD_ITEMS, (taken, seen)
