"""myelin.handoff: the threads that run a sync predict for the event loop (no timing is asserted here)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from myelin.handoff import Handoff


class Wrapped(Exception):
    def __init__(self, original: BaseException):
        super().__init__(repr(original))
        self.original = original


def run(coro):
    return asyncio.run(coro)


def test_results_reach_their_own_callers():
    async def main():
        pool = Handoff(3)
        loop = asyncio.get_running_loop()
        futs = [pool.start(loop, lambda i=i: i * i)[0] for i in range(500)]
        assert await asyncio.gather(*futs) == [i * i for i in range(500)]
        assert 1 <= len(pool._threads) <= 3
        assert all(t.daemon for t in pool._threads)  # a stuck predict cannot hold up the exit
        pool.shutdown()

    run(main())


def test_any_exception_reaches_the_caller_wrapped_and_the_thread_survives():
    def boom(kind):
        raise kind("no")

    async def main():
        pool = Handoff(1, wrap_error=Wrapped)
        loop = asyncio.get_running_loop()
        for kind in (ValueError, SystemExit, KeyboardInterrupt, StopIteration):
            fut, _ = pool.start(loop, boom, kind)
            with pytest.raises(Wrapped) as exc:
                await fut
            assert type(exc.value.original) is kind
        assert await pool.start(loop, lambda: "alive")[0] == "alive"
        pool.shutdown()

    run(main())


def test_a_queued_call_can_be_cancelled_a_running_one_cannot():
    async def main():
        pool = Handoff(1)
        loop = asyncio.get_running_loop()
        entered, release = threading.Event(), threading.Event()
        ran = []

        def blocker():
            entered.set()
            release.wait(30)
            return "first"

        first, first_call = pool.start(loop, blocker)
        await loop.run_in_executor(None, entered.wait, 30)
        second, second_call = pool.start(loop, ran.append, "second")
        assert first_call.cancel() is False  # running: it will return
        assert second_call.cancel() is True  # queued: it never runs
        release.set()
        assert await first == "first"
        third, _ = pool.start(loop, lambda: "third")
        assert await third == "third"
        assert ran == [] and not second.done()
        pool.shutdown()

    run(main())


def test_standard_executor_api_for_run_in_executor_and_streams():
    async def main():
        pool = Handoff(2)
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(pool, pow, 2, 10) == 1024
        fut = pool.submit(lambda a, b=0: a + b, 1, b=2)
        assert fut.result(timeout=30) == 3
        err = pool.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            err.result(timeout=30)
        pool.shutdown()

    run(main())


def test_shutdown_cancels_queued_work_and_refuses_new_work():
    pool = Handoff(1)
    entered, release = threading.Event(), threading.Event()
    running = pool.submit(lambda: (entered.set(), release.wait(30)))
    assert entered.wait(30)
    queued = pool.submit(lambda: "never")
    pool.shutdown(wait=False, cancel_futures=True)
    assert queued.cancelled()
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)
    release.set()
    running.result(timeout=30)
    pool.shutdown(wait=True)
    assert not any(t.is_alive() for t in pool._threads)


def test_a_burst_of_results_costs_fewer_loop_wake_ups_than_calls():
    """Calls queued behind a busy thread come back with one wake-up of the loop for the whole burst."""

    async def main():
        pool = Handoff(1)
        loop = asyncio.get_running_loop()
        wakeups = 0
        drain = pool._drain

        def counting_drain(lp):
            nonlocal wakeups
            wakeups += 1
            drain(lp)

        pool._drain = counting_drain
        all_ran = threading.Event()
        ran = []

        def call(i):
            ran.append(i)
            if len(ran) == 200:
                all_ran.set()
            return i

        futs = [pool.start(loop, call, i)[0] for i in range(200)]
        assert all_ran.wait(30)  # the loop is busy (blocked here) while the thread finishes every call
        assert await asyncio.gather(*futs) == list(range(200))
        assert wakeups == 1
        pool.shutdown()

    run(main())


def test_at_least_one_worker():
    with pytest.raises(ValueError):
        Handoff(0)
