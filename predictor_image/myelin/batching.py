"""Dynamic batching: queued payloads become one `predict(list)` call.

A batch is dispatched when the predictor is free (fewer than `max_batches`
batches running, and fewer than `max_concurrency` requests inside them). It
takes what is queued, up to `max_batch_size` (and the free request slots). It
waits for more only when traffic says more is coming: if fewer requests are
queued than the previous batch held, it waits until the oldest has waited
`max_batch_delay`. A lone client (previous batch of 1) never waits; under load
batches fill up to the size the load sustains, and a drop in load costs one
wait of at most `max_batch_delay` before batches shrink to match.
Results go back to their callers in order; an exception, or a result list of
the wrong length, fails exactly the requests of that batch. A `PredictorError`
placed in the result list instead of a result fails only its own request.

A request may carry several predictions (`submit_many`: the rows of an Open
Inference Protocol request, the inputs of an OpenAI embeddings request): its
payloads join the batch side by side, along the first dimension, and it gets
back the list of their results. Batch sizes, `max_batch_size` and the running
count against `max_concurrency` are in predictions; one request is never split
across two batches (so it may hold at most `max_batch_size` predictions).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Callable

from .errors import PredictorError, overloaded


class _Item:
    __slots__ = ("payload", "extras", "future", "enqueued", "ticket", "size", "many")

    def __init__(self, payload: Any, extras: dict[str, Any] | None, future: asyncio.Future, enqueued: float,
                 ticket: Any, size: int = 1, many: bool = False):
        self.payload = payload
        self.extras = extras
        self.future = future
        self.enqueued = enqueued
        self.ticket = ticket  # the request's lifecycle.Ticket: its call runs while its batch does
        self.size = size  # predictions in this request: 1, or len(payload) when `many`
        self.many = many  # payload is a list of payloads (submit_many), answered with the list of their results


class BatchResultError(Exception):
    """predict broke the batching contract (not a list, wrong length): a 500 whose details go to the log only."""


class Batcher:
    def __init__(
        self,
        call: Callable[[Any, dict[str, Any]], asyncio.Future],
        max_batch_size: int,
        max_batch_delay: float,
        max_concurrency: int,
        max_queue_length: int,
        max_batches: int = 1,
        extra_names: tuple[str, ...] = (),
        on_batch: Callable[[int], None] | None = None,
    ):
        self._call = call
        self.max_batch_size = max_batch_size
        self.max_batch_delay = max_batch_delay
        self.max_concurrency = max_concurrency
        self.max_queue_length = max_queue_length
        self.max_batches = max_batches
        self._extra_names = extra_names
        self._on_batch = on_batch
        self._queue: deque[_Item] = deque()
        self.running = 0  # batches inside predict
        self.running_requests = 0  # predictions inside those batches (a request of several counts each)
        self._queued = 0  # predictions waiting in the queue
        self._last_batch = 1  # size of the previous batch: how many requests to expect
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def submit(self, payload: Any, extras: dict[str, Any] | None, ticket: Any) -> asyncio.Future:
        """Queue one payload; the returned future resolves to its own result. Raises 503 when the queue is full.

        Payloads that can join a batch at once (free request slots) do not count against
        `max_queue_length`: only those that would have to wait do.
        """
        free = self.max_concurrency - self.running_requests if self.running < self.max_batches else 0
        if len(self._queue) >= self.max_queue_length + max(0, free):
            raise overloaded()
        return self._enqueue(payload, extras, ticket, 1, False)

    def submit_many(self, payloads: list[Any], extras: dict[str, Any] | None, ticket: Any) -> asyncio.Future:
        """Queue one request of several predictions; its future resolves to the list of their results (a
        `PredictorError` in place of a result it stands for). At most `max_batch_size` payloads."""
        if not 1 <= len(payloads) <= self.max_batch_size:
            raise ValueError(f"a request of {len(payloads)} predictions: 1 to max_batch_size ({self.max_batch_size})")
        free = self.max_concurrency - self.running_requests if self.running < self.max_batches else 0
        if len(self._queue) >= self.max_queue_length + max(0, free):
            raise overloaded()
        return self._enqueue(payloads, extras, ticket, len(payloads), True)

    def _enqueue(self, payload: Any, extras: dict[str, Any] | None, ticket: Any, size: int, many: bool
                 ) -> asyncio.Future:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._queue.append(_Item(payload, extras, fut, loop.time(), ticket, size, many))
        self._queued += size
        if not self._scheduled and self._free():
            # Dispatch after this loop iteration, so requests parsed in the same tick share the batch.
            self._scheduled = True
            loop.call_soon(self._dispatch)
        return fut

    def forget(self, fut: asyncio.Future) -> None:
        """Drop a request that gave up while queued (deadline, cancellation), so it stops counting as waiting."""
        for item in self._queue:
            if item.future is fut:
                self._queue.remove(item)
                self._queued -= item.size
                return

    def _free(self) -> bool:
        return self.running < self.max_batches and self.running_requests < self.max_concurrency

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _dispatch(self) -> None:
        self._scheduled = False
        queue = self._queue
        loop = self._loop
        while queue and self._free():
            while queue and queue[0].future.done():  # timed out while queued
                self._queued -= queue.popleft().size
            if not queue:
                return
            room = min(self.max_batch_size, self.max_concurrency - self.running_requests)
            expected = min(room, self._last_batch)
            if self._queued < expected and self.max_batch_delay > 0:
                ready_at = queue[0].enqueued + self.max_batch_delay
                if loop.time() < ready_at:
                    if self._timer is None:
                        self._timer = loop.call_at(ready_at, self._on_timer)
                    return
            items = []
            size = 0
            while queue and size + queue[0].size <= room:
                item = queue.popleft()
                self._queued -= item.size
                if not item.future.done():
                    items.append(item)
                    size += item.size
            if not items:
                break  # the next request holds more predictions than the slots free now: a running batch frees them
            self._last_batch = size
            self._start(items, size)
        if self._timer is not None and not queue:
            self._timer.cancel()
            self._timer = None

    def _start(self, items: list[_Item], size: int) -> None:
        self.running += 1
        self.running_requests += size
        for item in items:  # the batch's requests are in one call (stuck together: lifecycle.Lifecycle.scan)
            item.ticket.begin_call(items)
        if self._on_batch is not None:
            self._on_batch(size)
        plain = not any(item.many for item in items)  # one prediction per request: the common case
        if plain:
            payloads = [item.payload for item in items]
            kwargs = {name: [item.extras[name] for item in items] for name in self._extra_names}
        else:
            payloads = []
            kwargs = {name: [] for name in self._extra_names}
            for item in items:
                if item.many:
                    payloads.extend(item.payload)
                else:
                    payloads.append(item.payload)
                for name in self._extra_names:
                    kwargs[name].extend([item.extras[name]] * item.size)
        try:
            inner = self._call(payloads, kwargs)
        except BaseException as err:  # noqa: BLE001 - e.g. executor shut down
            self._finish(items, size, plain, None, err)
            return
        inner.add_done_callback(lambda f: self._done(items, size, plain, f))

    def _done(self, items: list[_Item], size: int, plain: bool, inner: asyncio.Future) -> None:
        if inner.cancelled():
            self._finish(items, size, plain, None, asyncio.CancelledError())
        elif inner.exception() is not None:
            self._finish(items, size, plain, None, inner.exception())
        else:
            self._finish(items, size, plain, inner.result(), None)

    def _finish(self, items: list[_Item], size: int, plain: bool, results: Any, error: BaseException | None) -> None:
        self.running -= 1
        self.running_requests -= size
        for item in items:
            item.ticket.returned()
        if error is None:
            n = size
            if isinstance(results, (str, bytes, dict)) or not hasattr(results, "__len__"):
                error = BatchResultError(
                    f"with batching on, predict must return a list of {n} results, got {type(results).__name__}"
                )
            elif len(results) != n:
                error = BatchResultError(f"predict returned {len(results)} results for a batch of {n} payloads")
        if error is not None:
            for item in items:
                if not item.future.done():
                    item.future.set_exception(error)
        elif plain:
            for item, result in zip(items, results):
                if item.future.done():
                    continue
                if isinstance(result, PredictorError):  # a per-item error: only that request fails
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)
        else:
            results = list(results)
            at = 0
            for item in items:
                if item.many:
                    mine: Any = results[at:at + item.size]  # PredictorErrors included: the caller says which row
                else:
                    mine = results[at]
                at += item.size
                if item.future.done():
                    continue
                if not item.many and isinstance(mine, PredictorError):
                    item.future.set_exception(mine)
                else:
                    item.future.set_result(mine)
        if self._queue and not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._dispatch)
