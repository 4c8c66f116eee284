"""invoke.Deadlines: request deadlines on one timer."""

from __future__ import annotations

import asyncio

import pytest

from myelin.invoke import Deadlines, Timeout


def test_each_future_fails_at_its_deadline_and_only_then():
    async def scenario():
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop, 0.1)
        now = loop.time()
        futs = [loop.create_future() for _ in range(4)]
        entries = [deadlines.add(f, now + d) for f, d in zip(futs, (0.05, 0.1, 0.1, 0.3))]
        futs[1].set_result("answered")
        deadlines.clear(entries[1])  # answered before its deadline: never expired
        await asyncio.sleep(0.15)
        state = [f.done() for f in futs]
        assert isinstance(futs[0].exception(), Timeout) and isinstance(futs[2].exception(), Timeout)
        assert futs[1].result() == "answered" and state[3] is False
        await asyncio.sleep(0.2)
        assert isinstance(futs[3].exception(), Timeout)
        for e in entries:
            deadlines.clear(e)
    asyncio.run(scenario())


def test_a_deadline_earlier_than_the_last_queued_gets_its_own_timer():
    async def scenario():
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop, 1.0)
        now = loop.time()
        late, early = loop.create_future(), loop.create_future()
        deadlines.add(late, now + 5)
        entry = deadlines.add(early, now + 0.05)  # out of order: must not wait for the 5 s head
        await asyncio.sleep(0.1)
        assert isinstance(early.exception(), Timeout) and not late.done()
        deadlines.clear(entry)
        deadlines.close()
    asyncio.run(scenario())


def test_answered_entries_do_not_pile_up_behind_a_long_one():
    """A request that waits long (a stuck predict) holds the head; those answered after it are compacted away, so
    the queue stays near twice the requests still waiting."""
    async def scenario():
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop, 60.0)
        now = loop.time()
        stuck = loop.create_future()
        deadlines.add(stuck, now + 60)
        for i in range(10_000):
            f = loop.create_future()
            e = deadlines.add(f, now + 60 + i * 1e-6)
            f.set_result(i)
            deadlines.clear(e)
        assert len(deadlines._queue) <= 2 * Deadlines.COMPACT_ABOVE + 2
        deadlines.close()
    asyncio.run(scenario())


def test_an_earlier_deadline_after_the_queue_emptied_does_not_wait_for_the_armed_timer():
    """The timer was armed for an answered request's later deadline; the queue emptied of answered entries when the
    next one came, and that one, earlier (its body was slower), waited for the old timer: a 504 an hour late here."""
    async def scenario():
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop, 1.0)
        now = loop.time()
        answered, early = loop.create_future(), loop.create_future()
        entry = deadlines.add(answered, now + 3600)
        answered.set_result("ok")
        deadlines.clear(entry)
        deadlines.add(early, now + 0.05)
        await asyncio.wait_for(asyncio.shield(early), 30)
    with pytest.raises(Timeout):
        asyncio.run(scenario())


def test_an_earlier_deadline_after_a_compaction_emptied_the_queue():
    async def scenario():
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop, 1.0)
        now = loop.time()
        for i in range(Deadlines.COMPACT_ABOVE + 2):
            f = loop.create_future()
            e = deadlines.add(f, now + 3600 + i)
            f.set_result(i)
            if i:  # the first stays at the head until the compaction removes every answered one
                deadlines.clear(e)
        deadlines.clear(deadlines._queue[0])
        early = loop.create_future()
        deadlines.add(early, now + 0.05)
        await asyncio.wait_for(asyncio.shield(early), 30)
    with pytest.raises(Timeout):
        asyncio.run(scenario())
