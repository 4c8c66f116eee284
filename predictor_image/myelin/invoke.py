"""The invocation core: run one predict under admission (or batching) within its deadline.

No ASGI here: the HTTP front door (`endpoint.py`) and any other caller (a queue worker) hand an
`Invoker` a decoded payload, the extra arguments the predictor declared, and the request's
`lifecycle.Ticket` (its deadline is on the event loop's clock); they get the result back or an
exception (`Timeout`, `HTTPError` for overload, `PredictorError`, or whatever predict raised).
The call marks the ticket while it runs, so in-flight and stuck accounting see it until it
really returns (`lifecycle.py`).

How a call runs depends on the predictor's call kind, decided once at load (`loader.CallKind`):
a sync `predict` runs in this API's thread pool, never on the event loop; an `async def predict`
runs on the loop.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from typing import Any, Callable

from .admission import AdmissionControl
from .batching import Batcher
from .errors import HTTPError, PredictorError
from .handoff import Handoff
from .lifecycle import Ticket
from .loader import Predictor
from .spec import ApiSpec


class Timeout(HTTPError):
    def __init__(self, seconds: float):
        super().__init__(504, "timeout", f"no prediction within the {seconds:g}s timeout (serving.timeout)")


def _expire(fut: asyncio.Future, seconds: float) -> None:
    if not fut.done():  # the exception is built only when a deadline really passes
        fut.set_exception(Timeout(seconds))


class Deadlines:
    """Futures failed with `Timeout` when their deadline passes, all on one event-loop timer.

    A uvloop timer costs about 2 µs to start and cancel, as much as the rest of a request's bookkeeping, and
    almost every request returns long before its deadline. So the futures wait in a queue in the order their
    deadlines come (each request's is `serving.timeout` after it began, so the order they are added in), and one
    timer, armed for the first deadline, expires every due one and re-arms for the next. A future whose wait
    is over is cleared from its entry (`clear`); cleared entries leave the queue when they reach its head, or
    all at once when they outnumber the live ones, so the queue holds at most about twice the requests in
    flight. A deadline earlier than the last one queued (a request whose deadline counts from its arrival at the
    load balancer, or whose body took longer than a later one's) gets a timer of its own.
    """

    __slots__ = ("_loop", "_seconds", "_queue", "_timer", "_timer_at", "_cleared")

    COMPACT_ABOVE = 1024

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float):
        self._loop = loop
        self._seconds = seconds  # serving.timeout, for the 504's message
        self._queue: deque[list] = deque()  # [deadline, future or None once cleared]
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when `_timer` fires
        self._cleared = 0  # cleared entries still queued

    def add(self, fut: asyncio.Future, deadline: float) -> list:
        """Fail `fut` with Timeout at `deadline` (loop time) unless `clear` comes first; returns the entry for it."""
        queue = self._queue
        if queue:
            while queue and queue[0][1] is None:  # answered requests at the head: gone
                queue.popleft()
                self._cleared -= 1
            if queue and deadline < queue[-1][0]:
                return [deadline, fut, self._loop.call_at(deadline, _expire, fut, self._seconds)]
        entry = [deadline, fut]
        queue.append(entry)
        timer = self._timer
        if timer is not None and deadline < self._timer_at and len(queue) == 1:
            # The queue emptied (answered entries popped or compacted) while the timer waits for a later deadline
            # than this one's: it would expire late.
            timer.cancel()
            timer = None
        if timer is None:
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline, self._fire)
        return entry

    def clear(self, entry: list) -> None:
        """The wait on this entry's future is over (answered, expired or given up)."""
        if len(entry) == 3:
            entry[2].cancel()
        elif entry[1] is not None:
            entry[1] = None
            self._cleared += 1
            if self._cleared > self.COMPACT_ABOVE and self._cleared * 2 > len(self._queue):
                self._queue = deque(e for e in self._queue if e[1] is not None)
                self._cleared = 0

    def _fire(self) -> None:
        self._timer = None
        queue = self._queue
        now = self._loop.time()
        while queue:
            entry = queue[0]
            fut = entry[1]
            if fut is None:
                queue.popleft()
                self._cleared -= 1
                continue
            if entry[0] > now:
                self._timer_at = entry[0]
                self._timer = self._loop.call_at(entry[0], self._fire)
                return
            queue.popleft()
            entry[1] = None  # expired: its waiter's clear() has nothing left to do
            _expire(fut, self._seconds)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class PredictorFailure(Exception):
    """Whatever predict raised, other than PredictorError, carried safely to its request.

    Any BaseException qualifies (StopIteration, KeyboardInterrupt, SystemExit, a predictor's own
    CancelledError...): delivered as is, some would break the future that carries it (StopIteration) or
    the event loop itself (SystemExit, KeyboardInterrupt from an async predict). The original is kept
    for the log.
    """

    def __init__(self, original: BaseException):
        super().__init__(f"{type(original).__name__}: {original}")
        self.original = original


def failure(err: BaseException) -> BaseException:
    """What a request gets for an exception from predict: PredictorError as is, anything else wrapped."""
    return err if isinstance(err, (PredictorError, PredictorFailure)) else PredictorFailure(err)


async def _guarded(coro: Any) -> Any:
    """Await an async predict; whatever it raises reaches the request, never the event loop."""
    try:
        return await coro
    except (PredictorError, PredictorFailure):
        raise
    except asyncio.CancelledError as err:
        task = asyncio.current_task()
        if task is not None and task.cancelling():  # cancelled by the server (deadline, shutdown): propagate
            raise
        raise PredictorFailure(err) from None  # raised by the predictor itself: a failure like any other
    except BaseException as err:  # noqa: BLE001 - SystemExit/KeyboardInterrupt included, on purpose
        raise PredictorFailure(err) from None


def deliver(fut: asyncio.Future, result: Any) -> None:
    if not fut.done():
        fut.set_result(result)


def deliver_error(fut: asyncio.Future, err: BaseException) -> None:
    if not fut.done():
        fut.set_exception(err)


def max_concurrent_batches(spec: ApiSpec, predictor: Predictor) -> int:
    """Batches that may run at once in one process.

    While they run, new requests queue and form the next batch; so an async predict runs one batch
    at a time unless `batching.max_concurrent_batches` says more (each would otherwise start as soon
    as one request arrives, batches of one). A sync predict runs one batch per thread:
    `serving.threads`, or fewer if `max_concurrent_batches` says so.
    """
    configured = spec.batching.max_concurrent_batches
    if predictor.is_async:
        return configured or 1
    return min(configured or spec.serving.threads, spec.serving.threads)


class Invoker:
    """Admission or batching, the deadline, and the call itself for one loaded predictor.

    Every call holds its request's `lifecycle.Ticket`: `begin_call` when it starts, `returned` when it
    really returns (past its deadline included); the in-flight and stuck accounting live there.
    """

    def __init__(self, name: str, spec: ApiSpec, predictor: Predictor, max_concurrency: int, max_queue_length: int,
                 on_batch: Callable[[int], None] | None = None):
        self.name = name
        self.predictor = predictor
        self.timeout = spec.serving.timeout.seconds
        self.max_concurrency = max_concurrency
        self.max_queue_length = max_queue_length
        self.admission = AdmissionControl(max_concurrency, max_queue_length)
        self.batcher: Batcher | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadlines: Deadlines | None = None
        # A sync predict's slots are the pool's threads (no more than max_concurrency of them): an admitted call
        # goes straight to the pool's queue, and a thread that finishes one takes the next without a round trip
        # through the event loop (`_invoke_sync`).
        self._sync_slots = min(spec.serving.threads, max_concurrency)
        self._executor = Handoff(self._sync_slots, thread_name_prefix=f"predict-{name}", wrap_error=failure)
        # Calls that can run at once; when that many are stuck, the replica cannot serve anything.
        if spec.batching is not None:
            self.call_capacity = max_concurrent_batches(spec, predictor)
        else:
            self.call_capacity = max_concurrency if predictor.is_async else min(max_concurrency, spec.serving.threads)
        extras = tuple(n for n, want in (("query_params", predictor.wants_query_params),
                                         ("headers", predictor.wants_headers)) if want)
        if spec.batching is not None:
            self.batcher = Batcher(
                self._call, spec.batching.max_batch_size, spec.batching.max_batch_delay.seconds,
                max_concurrency, max_queue_length, self.call_capacity, extras, on_batch,
            )

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop the calls' futures resolve on (the server's)."""
        self._loop = loop
        self._deadlines = Deadlines(loop, self.timeout)

    @property
    def executor(self) -> Handoff:
        """This API's thread pool: a sync predict, and each step of a sync generator, runs here."""
        return self._executor

    @property
    def waiting(self) -> int:
        if self.batcher is not None:
            return self.batcher.waiting
        if self.predictor.is_async or self.predictor.streams:
            return self.admission.waiting
        return max(0, self.admission.running - self._sync_slots)  # sync calls queued for a thread

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._deadlines is not None:
            self._deadlines.close()

    # ---------------------------------------------------------------- slots
    async def wait_for_slot(self, waiter: asyncio.Future, deadline: float) -> None:
        """Queued by `admission.try_acquire()`: wait for the slot until `deadline`, else Timeout (504)."""
        if not await self.admission.wait(waiter, deadline):
            raise Timeout(self.timeout)

    def release(self, ticket: Ticket) -> None:
        """A call that held an admission slot really returned: free the slot, and the ticket's call."""
        self.admission.release()
        ticket.returned()

    # ---------------------------------------------------------------- one call
    def _call(self, payload: Any, kwargs: dict[str, Any]) -> asyncio.Future:
        """Start one batch's predict call; the returned future resolves on the event loop once it returns."""
        return self._start_call(payload, kwargs)[0]

    def _start_call(self, payload: Any, kwargs: dict[str, Any]) -> tuple[asyncio.Future, Any]:
        """(future resolved on the loop once predict returns, the handoff's call of a sync predict, to cancel it
        while queued)."""
        predictor = self.predictor
        loop = self._loop
        if predictor.is_async:
            return loop.create_task(_guarded(predictor.predict(payload, **kwargs))), None
        # Any exception from predict (any BaseException) reaches the request wrapped by failure().
        if kwargs:
            return self._executor.start(loop, functools.partial(predictor.predict, payload, **kwargs))
        return self._executor.start(loop, predictor.predict, payload)

    def _returned(self, ticket: Ticket, out: asyncio.Future, inner: asyncio.Future) -> None:
        """The call really returned (past the request's deadline included): free its slot, answer if still waited for."""
        self.admission.release()
        ticket.returned()
        if out.done():
            return
        if inner.cancelled():  # not by us (we only cancel after `out` is done): a failure, as JSON
            out.set_exception(RuntimeError("predict was cancelled"))
        elif inner.exception() is not None:
            out.set_exception(inner.exception())
        else:
            out.set_result(inner.result())

    async def invoke_each(self, payloads: list[Any], kwargs: dict[str, Any], ticket: Ticket) -> list[Any]:
        """The results of a request carrying several payloads (the rows of an OIP request, the inputs of an
        embeddings request), in order, or the exception that ends it.

        Batched: the payloads join one batch side by side (`Batcher.submit_many`; a per-payload PredictorError
        comes back in its place), `max_batch_size` at a time, one part after the other (so the ticket is in one
        call at a time). Not batched: one call each, in turn, under the one ticket and its deadline.
        """
        batcher = self.batcher
        if batcher is None:
            return [await self.invoke(payload, kwargs, ticket) for payload in payloads]
        size = batcher.max_batch_size
        if len(payloads) <= size:
            return await self._submit_many(batcher, payloads, kwargs, ticket)
        results: list[Any] = []
        for at in range(0, len(payloads), size):
            results.extend(await self._submit_many(batcher, payloads[at:at + size], kwargs, ticket))
        return results

    async def _submit_many(self, batcher: Batcher, payloads: list[Any], kwargs: dict[str, Any], ticket: Ticket
                           ) -> list[Any]:
        fut = batcher.submit_many(payloads, kwargs, ticket)
        deadlines = self._deadlines
        entry = deadlines.add(fut, ticket.deadline)
        try:
            return await fut
        except BaseException:
            batcher.forget(fut)
            raise
        finally:
            deadlines.clear(entry)

    async def invoke(self, payload: Any, kwargs: dict[str, Any], ticket: Ticket) -> Any:
        """The predictor's result for `payload`, or the exception that ends the request (504 at `ticket.deadline`)."""
        loop = self._loop
        deadline = ticket.deadline
        deadlines = self._deadlines
        if self.batcher is not None:
            fut = self.batcher.submit(payload, kwargs, ticket)
            entry = deadlines.add(fut, deadline)
            try:
                return await fut
            except BaseException:
                self.batcher.forget(fut)  # timed out or cancelled while queued: stop counting it as waiting
                raise
            finally:
                deadlines.clear(entry)
        admission = self.admission
        if not self.predictor.is_async:
            # Counted, not limited here: the pool runs at most `_sync_slots` calls, the rest wait in its queue.
            # The HTTP admission (lifecycle.py) bounds what waits; a call still queued at its deadline never runs.
            admission.running += 1
        else:
            waiter = admission.try_acquire()
            if waiter is not None and not await admission.wait(waiter, deadline):
                raise Timeout(self.timeout)
        ticket.calling = True  # Ticket.begin_call(), inlined on the hot path
        try:
            # An async predict runs in a task of its own from its first step: what it captures as
            # `asyncio.current_task()` before its first await (asyncio.timeout, wait_for, a TaskGroup) must be
            # the task that runs the rest of it, not the request's (tests/adversarial/test_attack_async_predict.py).
            inner, queued = self._start_call(payload, kwargs)
        except BaseException:
            self.release(ticket)
            raise
        out = loop.create_future()
        inner.add_done_callback(functools.partial(self._returned, ticket, out))
        entry = deadlines.add(out, deadline)
        try:
            return await out
        except Timeout:
            if queued is None:
                inner.cancel()  # an async predict: one that ignores this is stuck until it returns
            elif queued.cancel():
                inner.cancel()  # never started (all threads were busy): it never will; its slot is freed now
            raise  # a sync predict already running cannot be interrupted: stuck until it returns
        finally:
            deadlines.clear(entry)
