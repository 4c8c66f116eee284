"""The threads that run a sync predict for the event loop, with fewer wake-ups per call than a ThreadPoolExecutor.

Every sync call crosses threads twice: the loop hands the call to a thread, the thread hands the
result back. With `concurrent.futures.ThreadPoolExecutor` plus `loop.call_soon_threadsafe` each
crossing pays for objects and locks it does not need here (a `concurrent.futures.Future` with its
own Condition, a work item, the executor's shutdown locks and thread-count semaphore) and, on the
way back, one loop wake-up per call. `Handoff` keeps one lock and one condition for the pool:

- loop → thread: the call is appended to a deque; a sleeping thread is woken only when no thread
  already woken is on its way to take it (a busy thread takes the next call itself when it is done);
- thread → loop: results go into a second deque, and the loop is woken (`call_soon_threadsafe`)
  only when no wake-up is already pending; the loop then resolves every result waiting there, so a
  burst of completions costs one wake-up.

`start(loop, fn, *args)` is the fast path (an asyncio future, and a `Call` whose `cancel()` stops a
call that no thread has started yet). `submit()` is the standard `concurrent.futures.Executor` API
(used by `loop.run_in_executor` and the streaming of sync generators). Threads are started on
demand up to `max_workers` and are daemon threads: a predict stuck forever cannot hold up the exit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections import deque
from typing import Any, Callable


class Call:
    """One call handed to the threads. `cancel()` is True when no thread had started it (it never will)."""

    __slots__ = ("fn", "args", "future", "loop", "state", "_pool")

    QUEUED, RUNNING, CANCELLED = 0, 1, 2

    def __init__(self, pool: "Handoff", fn: Callable[..., Any], args: tuple, future: Any,
                 loop: asyncio.AbstractEventLoop | None):
        self.fn = fn
        self.args = args
        self.future = future  # an asyncio.Future (start), or a concurrent.futures.Future (submit)
        self.loop = loop
        self.state = Call.QUEUED
        self._pool = pool

    def cancel(self) -> bool:
        with self._pool._lock:
            if self.state == Call.RUNNING:
                return False
            self.state = Call.CANCELLED
            return True


def _resolve(fut: asyncio.Future, ok: bool, value: Any) -> None:
    if fut.done():  # e.g. the request's deadline passed first
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class Handoff(concurrent.futures.Executor):
    """A pool of up to `max_workers` threads running sync calls for asyncio event loops."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "handoff",
                 wrap_error: Callable[[BaseException], BaseException] | None = None):
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.max_workers = max_workers
        self._prefix = thread_name_prefix
        self._wrap_error = wrap_error  # what an exception from fn becomes for start()'s future
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)
        self._work: deque[Call] = deque()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for work
        self._woken = 0  # of those, already notified and not yet running
        self._shutdown = False
        # Results for the loops (one per loop that has calls in flight; normally the server's only one).
        self._results: dict[asyncio.AbstractEventLoop, deque] = {}
        self._wake_pending: set[asyncio.AbstractEventLoop] = set()

    @property
    def queued(self) -> int:
        """Calls waiting for a thread (read without the lock: a hint, e.g. for a stream's read-ahead to yield)."""
        return len(self._work)

    # ---------------------------------------------------------------- the loop's side
    def start(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> tuple[asyncio.Future, Call]:
        """Run `fn(*args)` in a thread: (a future resolved on `loop`, the call, to cancel it while queued).

        Called on `loop`'s thread. Whatever `fn` raises (any BaseException) resolves the future as an
        exception (through `wrap_error` when given), never reaches the thread or the loop itself.
        """
        fut = loop.create_future()
        call = Call(self, fn, args, fut, loop)
        if loop not in self._results:
            self._results[loop] = deque()
        self._put(call)
        return fut, call

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        if kwargs:
            fn, args = _with_kwargs(fn, args, kwargs), ()
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._put(Call(self, fn, args, fut, None))
        return fut

    def _put(self, call: Call) -> None:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new calls after shutdown")
            self._work.append(call)
            waiting = len(self._work)
            if self._idle > self._woken:
                self._woken += 1
                self._work_ready.notify()
            elif len(self._threads) < self.max_workers and waiting > self._woken:
                self._spawn()

    def _spawn(self) -> None:
        thread = threading.Thread(target=self._worker, name=f"{self._prefix}_{len(self._threads)}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the loop: resolve every result its calls left, after one wake-up."""
        self._wake_pending.discard(loop)  # before popping: a result added from now on schedules a new wake-up
        results = self._results[loop]
        pop = results.popleft
        while results:
            fut, ok, value = pop()
            _resolve(fut, ok, value)

    # ---------------------------------------------------------------- the threads' side
    def _worker(self) -> None:
        lock = self._lock
        work = self._work
        while True:
            with lock:
                while not work:
                    if self._shutdown:
                        return
                    self._idle += 1
                    self._work_ready.wait()
                    self._idle -= 1
                    if self._woken:
                        self._woken -= 1
                call = work.popleft()
                if call.state == Call.CANCELLED:
                    continue
                call.state = Call.RUNNING
            if call.loop is None:
                self._run_submitted(call)
                call = None
                continue
            try:
                value, ok = call.fn(*call.args), True
            except BaseException as err:  # noqa: BLE001 - any type is the caller's, never the thread's
                value, ok = (self._wrap_error(err) if self._wrap_error else err), False
            self._deliver(call.loop, call.future, ok, value)
            call = value = None  # drop references while waiting for the next call

    def _deliver(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future, ok: bool, value: Any) -> None:
        self._results[loop].append((fut, ok, value))
        if loop not in self._wake_pending:
            self._wake_pending.add(loop)
            try:
                loop.call_soon_threadsafe(self._drain, loop)
            except RuntimeError:  # the loop is closed: the process is exiting, nobody waits for this
                self._wake_pending.discard(loop)

    @staticmethod
    def _run_submitted(call: Call) -> None:
        fut = call.future
        if not fut.set_running_or_notify_cancel():
            return
        try:
            result = call.fn(*call.args)
        except BaseException as err:  # noqa: BLE001 - as ThreadPoolExecutor: the future carries it
            fut.set_exception(err)
        else:
            fut.set_result(result)

    # ---------------------------------------------------------------- shutdown
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            if cancel_futures:  # as ThreadPoolExecutor: queued calls never run (a request waiting on one ends at
                while self._work:  # its deadline, or when the server cancels it)
                    call = self._work.popleft()
                    call.state = Call.CANCELLED
                    if call.loop is None:
                        call.future.cancel()
            self._work_ready.notify_all()
            threads = list(self._threads)
        if wait:
            for thread in threads:
                thread.join()


def _with_kwargs(fn: Callable[..., Any], args: tuple, kwargs: dict) -> Callable[[], Any]:
    return lambda: fn(*args, **kwargs)
