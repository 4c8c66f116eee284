"""Streaming predictions: a generator `predict` sends each item to the client as soon as it is produced.

`endpoint.handle_predict` hands a streaming predictor's request here after the body is decoded.

- Framing by the request's `Accept`: `text/event-stream` gives Server-Sent Events (`data: <item>`
  per item: str as is, anything else as JSON); otherwise NDJSON (one JSON value per line).
- Before the first item a failure raises, and the caller answers with the ordinary JSON error.
  After it, an error can only end the stream: SSE sends `event: error` with the JSON error body,
  NDJSON a last line `{"error": {...}}`. Tracebacks go to the log only.
- A stream holds one admission slot from its start until its generator is finished or closed, and
  its request's `lifecycle.Ticket` until then too: a step still running past its deadline (a sync
  `next()` cannot be interrupted) is a stuck call, counted in flight and stuck, as a plain predict
  past its deadline is. `serving.timeout` bounds the first item (from arrival, queueing included)
  and every later step (handing an item to the client and producing the next);
  `serving.max_stream_duration` bounds the whole stream.
- A client disconnect (uvicorn reports it only as `http.disconnect` from `receive()`, so a watcher
  task waits on it), a drain past its grace period and `max_stream_duration` end the stream from
  outside: the pump task is cancelled, the generator closed (its `finally` runs) and the slot freed.
- A sync generator's `next()` runs in the API's thread pool, one step at a time, so the generator
  is never in two threads at once; it is closed in the pool too, once the step that is running
  returns (a thread cannot be interrupted). An async generator runs on the event loop; a step past
  its deadline is cancelled, and one that swallows the cancellation is stuck (counted so) until it
  returns, when the stream ends with the timeout error.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable

import orjson

from .errors import HTTPError, PredictorError, error_body
from .http_io import ClientGone
from .invoke import Timeout, deliver, deliver_error
from .loader import CallKind

if TYPE_CHECKING:
    from .lifecycle import Ticket
    from .runtime import ApiRuntime

SSE = b"text/event-stream"
NDJSON = b"application/x-ndjson"
#: Sent with every stream: no cache, and no buffering by a proxy in between (nginx honours the header).
STREAM_HEADERS = ((b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"))
_JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
_NEWLINES = re.compile(r"\r\n|\r|\n")
_END = object()  # the generator is exhausted
#: An async generator's items between two passes of the event loop (see AsyncItems.next).
YIELD_EVERY = 32


# ------------------------------------------------------------------------------------------- framing
class Framing:
    """How items and a closing error are written on the wire, by format.

    A protocol's framing (protocol_openai.py) may also end the stream before the generator does (`complete`
    set once an item finishes it: the generator is closed, no further item pulled) and close it with its own
    last bytes (`end`).
    """

    __slots__ = ("content_type",)
    #: Set (by a framing that can) once the stream is complete: no further item is pulled.
    complete = False

    def __init__(self, content_type: bytes):
        self.content_type = content_type

    def item(self, item: Any) -> bytes:
        """One item's bytes; TypeError/ValueError for an item that cannot be encoded."""
        if self.content_type is NDJSON:
            return orjson.dumps(item, option=_JSON_OPTS | orjson.OPT_APPEND_NEWLINE)
        if isinstance(item, str):
            if "\n" in item or "\r" in item:  # one `data:` line per line: the client joins them with "\n"
                return b"".join(b"data: " + line.encode() + b"\n" for line in _NEWLINES.split(item)) + b"\n"
            return b"data: " + item.encode() + b"\n\n"
        return b"data: " + orjson.dumps(item, option=_JSON_OPTS) + b"\n\n"

    def end(self) -> bytes:
        """The last bytes of a stream that ended well (after its last item)."""
        return b""

    def error(self, error_type: str, message: str, request_id: str) -> bytes:
        body = error_body(error_type, message, request_id)
        if self.content_type is NDJSON:
            return body + b"\n"
        return b"event: error\ndata: " + body + b"\n\n"


SSE_FRAMING = Framing(SSE)
NDJSON_FRAMING = Framing(NDJSON)


def framing_for(headers: list[tuple[bytes, bytes]]) -> Framing:
    """SSE when the request's Accept lists text/event-stream, else NDJSON."""
    for key, value in headers:
        if key == b"accept" and SSE in value.lower():
            return SSE_FRAMING
    return NDJSON_FRAMING


# ---------------------------------------------------------------------------------------- generators
class ThreadedGenerator:
    """A sync generator advanced in a thread pool one step at a time, and closed there."""

    def __init__(self, gen: Any, executor: ThreadPoolExecutor, loop: asyncio.AbstractEventLoop,
                 on_closed: Callable[[BaseException | None], None]):
        self._gen = gen
        self._executor = executor
        self._loop = loop
        self._on_closed = on_closed
        self._step: Future | None = None  # the pool's future of the last step: closing waits for it
        self._ended = False  # exhausted, or raised: nothing left to close
        self._closing = False

    def next(self) -> asyncio.Future:
        """The next item (or the end marker), resolved on the loop once one `next()` has run in the pool."""
        fut = self._loop.create_future()
        self._step = self._executor.submit(self._advance, fut)
        return fut

    def _advance(self, fut: asyncio.Future) -> None:
        # The end of the stream is a value here: a StopIteration must never reach a future (asyncio refuses it).
        try:
            item = next(self._gen)
        except StopIteration:
            self._ended = True
            item = _END
        except BaseException as err:  # noqa: BLE001 - delivered to the stream, which ends with it
            self._ended = True
            self._loop.call_soon_threadsafe(deliver_error, fut, err)
            return
        self._loop.call_soon_threadsafe(deliver, fut, item)

    async def close(self) -> None:
        """Close the generator (its `finally` runs) once no step is running; the slot is freed after that."""
        if self._closing:
            return
        self._closing = True
        step = self._step
        if step is None:  # never started: closing runs none of its code
            self._gen.close()
            self._on_closed(None)
        elif step.done() and self._ended:
            self._on_closed(None)
        else:
            step.cancel()  # a step still queued for a thread never runs
            # Now if the step is over (or was cancelled), else in its thread when it returns.
            step.add_done_callback(self._close_in_pool)

    def _close_in_pool(self, _: Future) -> None:
        try:
            self._executor.submit(self._close_here)
        except RuntimeError:  # the pool is shut down (the server is stopping): close in a thread of its own
            threading.Thread(target=self._close_here, name="close-stream", daemon=True).start()

    def _close_here(self) -> None:
        error = None
        try:
            self._gen.close()
        except BaseException as err:  # noqa: BLE001 - e.g. a `finally` that raises or yields: logged
            error = err
        try:
            self._loop.call_soon_threadsafe(self._on_closed, error)
        except RuntimeError:  # the loop is closed: the process is exiting
            pass


class AsyncItems:
    """An async generator driven on the event loop."""

    def __init__(self, agen: Any, on_closed: Callable[[BaseException | None], None]):
        self._agen = agen
        self._anext = agen.__anext__
        self._on_closed = on_closed
        self._closing = False
        self._steps = 0

    async def next(self) -> Any:
        # One pass of the event loop every YIELD_EVERY items: a generator that never awaits would otherwise keep
        # the loop to itself once its client is gone (a disconnected send returns at once): the disconnect, or a
        # drain, would go unseen until it ends.
        self._steps += 1
        if not self._steps % YIELD_EVERY:
            await asyncio.sleep(0)
        try:
            return await self._anext()
        except StopAsyncIteration:
            return _END

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        error = None
        try:
            await self._agen.aclose()  # at once: a generator cancelled inside a step has already run its finally
        except BaseException as err:  # noqa: BLE001
            error = err
        self._on_closed(error)
        if isinstance(error, asyncio.CancelledError):
            raise error


# -------------------------------------------------------------------------------------------- errors
class _Unencodable(Exception):
    pass


def _shutting_down() -> HTTPError:
    return HTTPError(503, "shutting_down", "the server is shutting down: the stream was ended after "
                     "serving.drain_timeout", [(b"retry-after", b"1")])


def _too_long(seconds: float) -> HTTPError:
    return HTTPError(504, "timeout", f"the stream ran past serving.max_stream_duration ({seconds:g}s)")


def _item_timeout(seconds: float) -> HTTPError:
    return HTTPError(504, "timeout", f"no next item within the {seconds:g}s timeout (serving.timeout)")


class Stream:
    """One streaming response: admission, the pump task that writes items, the disconnect watcher."""

    def __init__(self, runtime: "ApiRuntime", framing: Framing, request_id: str, send: Any, started_at: float):
        self.runtime = runtime
        self.framing = framing
        self.request_id = request_id
        self.send = send
        self.started_at = started_at  # perf_counter at arrival: time to first item
        #: Why the stream was ended from outside (ClientGone, or the HTTPError its error event carries).
        self.stop_reason: BaseException | None = None
        #: The last byte is being handed over: a disconnect reported now is the normal end of the response.
        self.finished = False
        self._pump: asyncio.Task | None = None
        self._released = False
        self.ticket: "Ticket | None" = None
        self._items: ThreadedGenerator | AsyncItems | None = None

    # ------------------------------------------------------------------ ending it from outside
    def stop(self, reason: BaseException) -> None:
        if self.stop_reason is None and not self.finished and self._pump is not None and not self._pump.done():
            self.stop_reason = reason
            self._pump.cancel()

    def shut_down(self) -> None:
        """The drain's grace period is over: end with an error event (`ApiRuntime.end_streams`)."""
        self.stop(_shutting_down())

    async def _watch(self, receive: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.stop(ClientGone())

    # ------------------------------------------------------------------ running it
    async def run(self, payload: Any, kwargs: dict[str, Any], ticket: "Ticket", receive: Any) -> tuple[int, str | None]:
        """Stream the predictor's items; returns the (status, error type) to log and count.

        Raises, with nothing sent, when it fails before the first item (the caller answers with JSON).
        """
        runtime = self.runtime
        invoker = runtime.invoker
        loop = runtime.loop
        deadline = ticket.deadline
        waiter = invoker.admission.try_acquire()
        if waiter is not None:
            await invoker.wait_for_slot(waiter, deadline)
        self.ticket = ticket
        ticket.begin_call()  # the generator is the call: it holds the slot until it is finished or closed
        try:
            predictor = runtime.predictor
            gen = predictor.predict(payload, **kwargs)
            items = (AsyncItems(gen, self._closed) if predictor.kind is CallKind.ASYNC_GENERATOR
                     else ThreadedGenerator(gen, invoker.executor, loop, self._closed))
        except BaseException:
            self._closed(None)
            raise
        self._pump = pump = loop.create_task(self._write(items, deadline))
        watcher = loop.create_task(self._watch(receive))
        limit = runtime.spec.serving.max_stream_duration
        timer = None
        if limit is not None:
            arrival = deadline - runtime.timeout
            timer = loop.call_at(arrival + limit.seconds, self.stop, _too_long(limit.seconds))
        runtime.streams.add(self)
        try:
            return await pump
        finally:
            runtime.streams.discard(self)
            watcher.cancel()
            if timer is not None:
                timer.cancel()

    def _closed(self, error: BaseException | None) -> None:
        """The generator is finished or closed: its slot and its ticket's call are free."""
        if self._released:
            return
        self._released = True
        self.runtime.invoker.release(self.ticket)
        if error is not None and not isinstance(error, asyncio.CancelledError):
            self.runtime.log.event("error", "closing the stream's generator raised", api=self.runtime.name,
                                   request_id=self.request_id, error=f"{type(error).__name__}: {error}")

    def _encode(self, item: Any) -> bytes:
        try:
            return self.framing.item(item)
        except (TypeError, ValueError) as err:
            self.runtime.log.event("error", "a streamed item could not be encoded", api=self.runtime.name,
                                   request_id=self.request_id, error=f"{type(item).__name__}: {err}")
            raise _Unencodable() from None

    async def _write(self, items: ThreadedGenerator | AsyncItems, deadline: float) -> tuple[int, str | None]:
        send = self.send
        framing = self.framing
        timeout = self.runtime.timeout
        ticket = self.ticket
        loop = self.runtime.loop
        self._items = items
        started = writing = False
        limit: asyncio.Timeout | None = None  # the deadline of the step under way
        try:
            async with asyncio.timeout_at(deadline) as limit:  # the first item: from arrival, queueing included
                item = await items.next()
            if limit.expired():  # an async step that swallowed its cancellation: late all the same
                raise TimeoutError()
            chunk = self._encode(item) if item is not _END else b""
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", self.framing.content_type), (b"x-request-id", self.request_id.encode("latin-1")),
                *STREAM_HEADERS,
            ]})
            started = True
            while item is not _END:
                writing = True
                # One step: hand this item over, produce the next. Its deadline is the ticket's: a step still
                # running past it is a stuck call (lifecycle.Lifecycle.scan).
                ticket.deadline = step_deadline = loop.time() + timeout
                async with asyncio.timeout_at(step_deadline) as limit:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    if self.started_at:
                        self.runtime.metrics.first_item.observe(time.perf_counter() - self.started_at)
                        self.started_at = 0.0
                    writing = False
                    item = _END if framing.complete else await items.next()
                if limit.expired():
                    raise TimeoutError()
                if item is not _END:
                    chunk = self._encode(item)
            self.finished = True
            await items.close()  # exhausted (or complete): the call is over before the last bytes go out
            await self._send_last(framing.end())
            return 200, None
        except asyncio.CancelledError:
            reason = self.stop_reason
            if reason is None:  # cancelled by the server's own shutdown
                if started:
                    await self._end_with(_shutting_down())
                raise
            if not started:  # answered with JSON by the caller (ClientGone: logged as 499)
                raise reason from None
            if isinstance(reason, ClientGone):
                return 499, "client_disconnected"
            return await self._end_with(reason)
        except TimeoutError as err:
            if limit is None or not limit.expired():  # raised by the predictor itself
                return await self._failed(err, started)
            if not started:
                raise Timeout(timeout) from None
            if writing:  # the client stopped reading: nothing more can reach it
                self.finished = True
                return 499, "client_stalled"
            return await self._end_with(_item_timeout(timeout))
        except _Unencodable:
            error = HTTPError(500, "internal", "a streamed item could not be encoded; see the server log")
            if not started:
                raise error from None
            return await self._end_with(error)
        except (HTTPError, PredictorError) as err:
            if not started:
                raise
            return await self._end_with(err)
        except BaseException as err:  # noqa: BLE001 - whatever predict raised
            return await self._failed(err, started)
        finally:
            await items.close()

    async def _failed(self, err: BaseException, started: bool) -> tuple[int, str]:
        """The predictor failed: before the first item the caller answers (and logs); after it, log and end."""
        if not started:
            if isinstance(err, Exception):
                raise err
            raise RuntimeError(f"predict raised {type(err).__name__}: {err}") from err
        self.runtime.log.event(
            "error", "predict raised", api=self.runtime.name, request_id=self.request_id,
            error=f"{type(err).__name__}: {err}", traceback="".join(traceback.format_exception(err)),
        )
        return await self._end_with(HTTPError(500, "predictor_failure", "the predictor failed; see the server log"))

    async def _end_with(self, err: HTTPError | PredictorError) -> tuple[int, str]:
        self.finished = True
        # The call ends before the error event goes out (a step still running closes the generator when it
        # returns): a slow reader of the event is not a stuck call.
        await self._items.close()
        await self._send_last(self.framing.error(err.error_type, err.message, self.request_id))
        return err.status_code, err.error_type

    async def _send_last(self, body: bytes) -> None:
        try:
            async with asyncio.timeout(self.runtime.timeout):
                await self.send({"type": "http.response.body", "body": body, "more_body": False})
        except TimeoutError:  # a client that stopped reading: uvicorn closes the connection
            pass


async def stream_response(runtime: "ApiRuntime", payload: Any, kwargs: dict[str, Any], ticket: "Ticket",
                          scope: dict, receive: Any, send: Any, request_id: str, started_at: float,
                          ) -> tuple[int, str | None]:
    """Stream a generator predict's items in the format the request accepts; (status, error type) to log."""
    stream = Stream(runtime, framing_for(scope["headers"]), request_id, send, started_at)
    return await stream.run(payload, kwargs, ticket, receive)
