"""The invocation core: run one predict under admission (or batching) within its deadline.

No ASGI here: the HTTP front door (`endpoint.py`) and any other caller (a queue worker) hand an
`Invoker` a decoded payload, the extra arguments the predictor declared, and a deadline on the
event loop's clock; they get the result back or an exception (`Timeout`, `HTTPError` for
overload, `PredictorError`, or whatever predict raised).

How a call runs depends on the predictor's call kind, decided once at load (`loader.CallKind`):
a sync `predict` runs in this API's thread pool, never on the event loop; an `async def predict`
runs on the loop.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from .admission import AdmissionControl
from .batching import Batcher
from .errors import HTTPError
from .loader import Predictor
from .spec import ApiSpec


class Timeout(HTTPError):
    def __init__(self, seconds: float):
        super().__init__(504, "timeout", f"no prediction within the {seconds:g}s timeout (serving.timeout)")


def _expire(fut: asyncio.Future, seconds: float) -> None:
    if not fut.done():  # the exception is built only when a deadline really passes
        fut.set_exception(Timeout(seconds))


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
    """Admission or batching, the deadline, and the call itself for one loaded predictor."""

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
        self._executor = ThreadPoolExecutor(spec.serving.threads, thread_name_prefix=f"predict-{name}")
        extras = tuple(n for n, want in (("query_params", predictor.wants_query_params),
                                         ("headers", predictor.wants_headers)) if want)
        if spec.batching is not None:
            self.batcher = Batcher(
                self._call, spec.batching.max_batch_size, spec.batching.max_batch_delay.seconds,
                max_concurrency, max_queue_length, max_concurrent_batches(spec, predictor), extras, on_batch,
            )

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop the calls' futures resolve on (the server's)."""
        self._loop = loop

    @property
    def executor(self) -> ThreadPoolExecutor:
        """This API's thread pool: a sync predict, and each step of a sync generator, runs here."""
        return self._executor

    @property
    def waiting(self) -> int:
        return self.batcher.waiting if self.batcher is not None else self.admission.waiting

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ---------------------------------------------------------------- one call
    def _call(self, payload: Any, kwargs: dict[str, Any]) -> asyncio.Future:
        """Start one predict call; the returned future resolves on the event loop."""
        return self._start_call(payload, kwargs)[0]

    def _start_call(self, payload: Any, kwargs: dict[str, Any]) -> tuple[asyncio.Future, Any]:
        """(future resolved on the loop, the executor's future for a sync predict, to cancel it while queued)."""
        predictor = self.predictor
        loop = self._loop
        if predictor.is_async:
            return loop.create_task(predictor.predict(payload, **kwargs)), None
        fut = loop.create_future()
        predict = predictor.predict

        def run() -> None:
            try:
                result = predict(payload, **kwargs)
            except BaseException as err:  # noqa: BLE001 - delivered to the request
                loop.call_soon_threadsafe(deliver_error, fut, err)
            else:
                loop.call_soon_threadsafe(deliver, fut, result)

        return fut, self._executor.submit(run)

    async def invoke(self, payload: Any, kwargs: dict[str, Any], deadline: float) -> Any:
        """The predictor's result for `payload`, or the exception that ends the request."""
        loop = self._loop
        if self.batcher is not None:
            fut = self.batcher.submit(payload, kwargs)
            timer = loop.call_at(deadline, _expire, fut, self.timeout)
            try:
                return await fut
            except BaseException:
                self.batcher.forget(fut)  # timed out or cancelled while queued: stop counting it as waiting
                raise
            finally:
                timer.cancel()
        admission = self.admission
        waiter = admission.try_acquire()
        if waiter is not None and not await admission.wait(waiter, deadline):
            raise Timeout(self.timeout)
        try:
            inner, queued_work = self._start_call(payload, kwargs)
        except BaseException:
            admission.release()
            raise
        out = loop.create_future()

        def done(f: asyncio.Future) -> None:
            admission.release()  # the slot is held until predict really returns, even past a timeout
            if out.done():
                return
            if f.cancelled():  # not by us (we only cancel after `out` is done): a failure, as JSON
                out.set_exception(RuntimeError("predict was cancelled"))
            elif f.exception() is not None:
                out.set_exception(f.exception())
            else:
                out.set_result(f.result())

        inner.add_done_callback(done)
        timer = loop.call_at(deadline, _expire, out, self.timeout)
        try:
            return await out
        except Timeout:
            if isinstance(inner, asyncio.Task):
                inner.cancel()
            elif queued_work is not None and queued_work.cancel():
                inner.cancel()  # never started (all threads were busy): it will not run; its slot is released now
            raise
        finally:
            timer.cancel()
