"""A sync generator's read-ahead (streaming.ThreadedGenerator), driven directly on an event loop with the
runtime's own thread pool (handoff.Handoff):

- with a stateless framing a thread runs ahead of the client, but never more than READ_AHEAD_ITEMS items or
  READ_AHEAD_BYTES encoded bytes; with a stateful one (OpenAI's completion) no item is pulled before it is asked;
- items waiting together are taken together, in order, and an error comes after the items before it;
- a slow step's item is handed over as soon as it is produced (no read-ahead behind a waiting loop);
- a stream reading ahead gives the pool's thread up to another call waiting for one;
- closing while a step runs closes the generator after that step, in the pool, once; and an unstarted
  generator is closed without running any of its code.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from myelin import streaming
from myelin.handoff import Handoff
from myelin.streaming import _END, NDJSON_FRAMING, ThreadedGenerator, _Unencodable

WAIT = 10.0  # seconds a test waits for something that happens within milliseconds


class Counted:
    """A generator of `n` items (None: forever) that counts the items it has produced and whether it is closed."""

    def __init__(self, n: int | None = None, item=lambda i: {"i": i}, step=None):
        self.produced = 0
        self.closed_in: str | None = None
        self.n = n
        self.item = item
        self.step = step  # called before each item (i): e.g. a slow step, or a wait

    def __call__(self):
        try:
            i = 0
            while self.n is None or i < self.n:
                if self.step is not None:
                    self.step(i)
                self.produced += 1
                yield self.item(i)
                i += 1
        finally:
            self.closed_in = threading.current_thread().name


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, WAIT))


def _items(gen_source: Counted, pool: Handoff, encode=NDJSON_FRAMING.item, closed=None):
    loop = asyncio.get_running_loop()
    reports = closed if closed is not None else []
    return ThreadedGenerator(gen_source(), pool, loop, reports.append, encode)


async def _until(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.001)


def _idle(items: ThreadedGenerator) -> bool:
    with items._lock:
        return not items._running


def test_a_thread_reads_ahead_at_most_read_ahead_items():
    source = Counted()

    async def main():
        pool = Handoff(2)
        items = _items(source, pool)
        taken = len(await items.take())
        await _until(lambda: _idle(items), "the read-ahead stops by itself")
        assert source.produced - taken == streaming.READ_AHEAD_ITEMS
        taken += len(await items.take())  # the 64 waiting, at once
        await _until(lambda: _idle(items), "the read-ahead stops again")
        assert source.produced - taken == streaming.READ_AHEAD_ITEMS
        await items.close()
        await _until(lambda: source.closed_in is not None, "closed")
        pool.shutdown()

    _run(main())
    assert source.closed_in.startswith("handoff")  # in the pool, never on the loop


def test_the_read_ahead_is_bounded_in_bytes():
    big = "x" * (20 * 1024)
    source = Counted(item=lambda i: big)

    async def main():
        pool = Handoff(1)
        items = _items(source, pool)
        taken = len(await items.take())
        await _until(lambda: _idle(items), "the read-ahead stops by itself")
        waiting = source.produced - taken
        assert 1 <= waiting <= streaming.READ_AHEAD_BYTES // len(big) + 1
        with items._lock:
            assert items._bytes < streaming.READ_AHEAD_BYTES + len(big) + 16
        await items.close()
        pool.shutdown()

    _run(main())


def test_a_stateful_framing_pulls_no_item_it_did_not_ask_for():
    source = Counted()

    async def main():
        pool = Handoff(2)
        items = _items(source, pool, encode=None)  # what a framing with `pure = False` gets
        for expected in range(1, 6):
            batch = await items.take()
            assert batch == [{"i": expected - 1}]  # raw items: the loop encodes them
            await _until(lambda: _idle(items), "the step is over")
            await asyncio.sleep(0.01)
            assert source.produced == expected
        await items.close()
        pool.shutdown()

    _run(main())


def test_items_waiting_together_are_taken_together_in_order_then_the_end():
    source = Counted(n=200)

    async def main():
        pool = Handoff(1)
        items = _items(source, pool)
        batches = []
        while (batch := await items.take()) is not _END:
            batches.append(batch)
        assert b"".join(b for batch in batches for b in batch) == b"".join(
            NDJSON_FRAMING.item({"i": i}) for i in range(200))
        assert max(len(b) for b in batches) > 1, "a fast generator's items are coalesced"
        assert await items.take() is _END
        await items.close()
        pool.shutdown()

    _run(main())


def test_an_error_comes_after_the_items_before_it_and_an_unencodable_item_ends_it():
    def fail_at_3(i):
        if i == 3:
            raise RuntimeError("boom")

    async def collect(source):
        pool = Handoff(1)
        closed: list = []
        items = _items(source, pool, closed=closed)
        got = []
        try:
            while (batch := await items.take()) is not _END:
                got.extend(batch)
        except BaseException as err:  # noqa: BLE001
            error = err
        else:
            error = None
        await items.close()
        await _until(lambda: closed, "closed reported")
        pool.shutdown()
        return got, error, closed

    got, error, closed = _run(collect(Counted(n=10, step=fail_at_3)))
    assert got == [NDJSON_FRAMING.item({"i": i}) for i in range(3)]
    assert isinstance(error, RuntimeError) and str(error) == "boom"
    assert closed == [None]

    source = Counted(n=10, item=lambda i: object() if i == 2 else {"i": i})
    got, error, closed = _run(collect(source))
    assert got == [NDJSON_FRAMING.item({"i": i}) for i in range(2)]
    assert isinstance(error, _Unencodable) and "object" in str(error)
    assert source.closed_in is not None and closed == [None]  # not exhausted: closed in the pool


def test_a_slow_steps_item_is_handed_over_as_soon_as_it_is_produced():
    def slow(i):
        end = time.perf_counter() + 0.003  # busy: the GIL is held, as by pure-Python work
        while time.perf_counter() < end:
            pass

    source = Counted(n=6, step=slow)

    async def main():
        pool = Handoff(1)
        items = _items(source, pool)
        sizes = []
        while (batch := await items.take()) is not _END:
            sizes.append(len(batch))
        await items.close()
        pool.shutdown()
        return sizes

    assert _run(main()) == [1] * 6


def test_a_stream_reading_ahead_gives_the_thread_to_a_call_waiting_for_it():
    second_step = threading.Event()
    release_third = threading.Event()

    def a_steps(i):
        if i == 1:
            assert second_step.wait(WAIT)
        if i == 2:
            release_third.wait(WAIT)  # never set: a stream that kept its thread would hold it here

    a_source = Counted(step=a_steps)
    b_source = Counted(n=1)

    async def main():
        pool = Handoff(1)  # one thread for both streams
        a = _items(a_source, pool)
        assert len(await a.take()) == 1
        # A's thread is now in its second step; B's first step waits for that thread.
        b = _items(b_source, pool)
        b_take = asyncio.ensure_future(b.take())
        await asyncio.sleep(0.05)
        second_step.set()
        assert await asyncio.wait_for(b_take, WAIT) == [NDJSON_FRAMING.item({"i": 0})]
        assert a_source.produced == 2, "A stopped after the step under way"
        release_third.set()
        await a.close()
        await b.close()
        pool.shutdown()

    _run(main())


def test_close_during_a_step_closes_after_it_once_and_an_unstarted_generator_runs_nothing():
    entered = threading.Event()
    leave = threading.Event()

    def blocking(i):
        if i == 1:
            entered.set()
            assert leave.wait(WAIT)

    source = Counted(step=blocking)

    async def main():
        pool = Handoff(2)
        closed: list = []
        items = _items(source, pool, closed=closed)
        await items.take()
        await _until(entered.is_set, "the second step started")
        await items.close()
        await items.close()  # twice: nothing more
        await asyncio.sleep(0.05)
        assert source.closed_in is None and closed == [], "not closed while its step runs"
        leave.set()
        await _until(lambda: closed, "closed after the step")
        assert closed == [None] and source.closed_in.startswith("handoff")
        assert source.produced == 2

        unstarted = Counted()
        closed2: list = []
        items2 = _items(unstarted, pool, closed=closed2)
        await items2.close()
        assert closed2 == [None] and unstarted.produced == 0
        pool.shutdown()

    _run(main())


def test_a_pool_shut_down_under_a_queued_step_ends_the_stream():
    block = threading.Event()
    busy = Counted(n=1, step=lambda i: block.wait(WAIT))
    source = Counted()

    async def main():
        pool = Handoff(1)
        first = _items(busy, pool)
        first_take = asyncio.ensure_future(first.take())  # holds the only thread
        await asyncio.sleep(0.02)
        items = _items(source, pool)
        take = asyncio.ensure_future(items.take())  # queued behind it
        await asyncio.sleep(0.02)
        pool.shutdown(wait=False, cancel_futures=True)
        with pytest.raises(Exception) as raised:
            await asyncio.wait_for(take, WAIT)
        assert getattr(raised.value, "error_type", None) == "shutting_down"
        block.set()
        await asyncio.wait_for(first_take, WAIT)

    _run(main())
    assert source.produced == 0
