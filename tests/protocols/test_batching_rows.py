"""`Batcher.submit_many` in-process, with a fake predict: a request's predictions join a batch side by side
along the first dimension, never split across two batches, counted in predictions against max_batch_size and
max_concurrency, and each request gets its own results back (a per-prediction PredictorError in its place)."""

from __future__ import annotations

import asyncio

import pytest

from myelin.batching import Batcher
from myelin.errors import PredictorError


class FakeTicket:
    def __init__(self):
        self.calls = 0
        self.returns = 0

    def begin_call(self, call=None):
        self.calls += 1

    def returned(self):
        self.returns += 1


def run(coro):
    return asyncio.run(coro)


def make(max_batch_size=4, max_concurrency=4):
    calls: list[list] = []
    gates: list[asyncio.Future] = []

    def call(payloads, kwargs):
        calls.append(list(payloads))
        fut = asyncio.get_running_loop().create_future()
        gates.append(fut)
        return fut

    batcher = Batcher(call, max_batch_size, 0.0, max_concurrency, 100)
    return batcher, calls, gates


def test_rows_of_several_requests_share_a_batch_and_come_back_in_order():
    async def go():
        batcher, calls, gates = make(max_batch_size=8, max_concurrency=8)
        t1, t2, t3 = FakeTicket(), FakeTicket(), FakeTicket()
        first = batcher.submit("solo", None, t1)  # dispatched alone (nothing says more is coming)
        await asyncio.sleep(0)
        many = batcher.submit_many(["a", "b", "c"], None, t2)
        single = batcher.submit("d", None, t3)
        gates[0].set_result(["SOLO"])
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert calls == [["solo"], ["a", "b", "c", "d"]]
        gates[1].set_result(["A", PredictorError(422, "bad b"), "C", "D"])
        assert await first == "SOLO"
        rows = await many
        assert rows[0] == "A" and isinstance(rows[1], PredictorError) and rows[2] == "C"
        assert await single == "D"
        assert (t2.calls, t2.returns) == (1, 1)  # one call for the request's three rows
        assert batcher.running_requests == 0 and batcher._queued == 0

    run(go())


def test_a_request_is_never_split_and_waits_for_room():
    async def go():
        batcher, calls, gates = make(max_batch_size=4, max_concurrency=4)
        t = [FakeTicket() for _ in range(3)]
        batcher.submit_many(["a1", "a2"], None, t[0])
        await asyncio.sleep(0)
        assert calls == [["a1", "a2"]] and batcher.running_requests == 2
        b = batcher.submit_many(["b1", "b2", "b3"], None, t[1])  # 3 > the 2 predictions of room left
        await asyncio.sleep(0)
        assert len(calls) == 1 and batcher.waiting == 1
        gates[0].set_result(["A1", "A2"])
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert calls[1] == ["b1", "b2", "b3"]
        gates[1].set_result(["B1", "B2", "B3"])
        assert await b == ["B1", "B2", "B3"]
        with pytest.raises(ValueError):
            batcher.submit_many(["x"] * 5, None, t[2])  # more than max_batch_size: the caller splits it

    run(go())


def test_a_wrong_length_fails_every_request_of_the_batch():
    async def go():
        batcher, calls, gates = make()
        many = batcher.submit_many(["a", "b"], None, FakeTicket())
        await asyncio.sleep(0)
        gates[0].set_result(["only one"])
        with pytest.raises(Exception, match="1 results for a batch of 2"):
            await many

    run(go())
