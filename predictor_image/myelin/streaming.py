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
  and every later step (handing the items produced to the client and getting the next);
  `serving.max_stream_duration` bounds the whole stream.
- A client disconnect (uvicorn reports it only as `http.disconnect` from `receive()`, so a watcher
  task waits on it), a drain past its grace period and `max_stream_duration` end the stream from
  outside: the pump task is cancelled, the generator closed (its `finally` runs) and the slot freed.
- A sync generator's `next()` runs in the API's thread pool, so the generator is never in two
  threads at once; it is closed in the pool too, once the step that is running returns (a thread
  cannot be interrupted). With NDJSON or SSE a thread reads a bounded number of items ahead of the
  client, and the items waiting when the loop writes go out in one chunk (ThreadedGenerator). An async generator runs on the event loop; a step past
  its deadline is cancelled, and one that swallows the cancellation is stuck (counted so) until it
  returns, when the stream ends with the timeout error.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import traceback
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable

import orjson

from .errors import HTTPError, PredictorError, ServerFault, error_body
from .handoff import Handoff
from .http_io import ClientGone
from .invoke import Timeout, deliver
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
#: An async generator's items between two passes of the event loop (see AsyncItems.take).
YIELD_EVERY = 32
#: A sync generator's read-ahead (ThreadedGenerator): items, and bytes of them encoded, waiting for the loop at
#: most; and how long a thread may go on reading ahead once the loop waits for an item it has (seconds).
READ_AHEAD_ITEMS = 64
READ_AHEAD_BYTES = 64 * 1024
READ_AHEAD_DELAY = 0.0002
#: How long a thread may read ahead before it gives the pool's thread to a call waiting for one (seconds): every
#: stream reading ahead gets turns of the same length (fair), and a waiting call waits for at most this, or the
#: step under way.
READ_AHEAD_TURN = 0.0002


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
    #: `item` has no state and may run in any thread: a sync generator's items are encoded in the pool and read
    #: ahead (ThreadedGenerator). A framing with state sets it False.
    pure = True

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
    """A sync generator advanced in the API's thread pool, never in two threads at once, and closed there.

    Each `next()` that the event loop waits for is a round trip loop -> thread -> loop (two thread switches and a
    loop wake-up, ~40 µs on one core: more than most generators' own step). So, with a stateless framing
    (`Framing.pure`: NDJSON, SSE), a thread runs ahead of the client: it pulls and encodes items into a buffer
    while the loop writes the previous ones, and the loop takes and writes every item waiting there in one chunk.
    The read-ahead is bounded: at most READ_AHEAD_ITEMS items or READ_AHEAD_BYTES encoded bytes wait for the loop
    (a client that stops reading stops the generator there); a thread reads ahead in turns: once a turn has lasted
    READ_AHEAD_TURN and another call waits for a thread of the pool, it gives its thread up after the step under way
    and queues behind that call (streams take turns of the same length; a stream that stopped instead would leave
    the thread to whichever producer found nothing queued); and a thread stops reading ahead when the loop waits
    for an item it has and the next step would delay it past READ_AHEAD_DELAY (a slow step's item goes out as soon
    as it is produced). A framing with state (protocol_openai.py's completion, which may end the
    stream at an item) gets one step per request of the loop, as before: no item is pulled that it did not ask for.
    """

    def __init__(self, gen: Any, executor: Handoff, loop: asyncio.AbstractEventLoop,
                 on_closed: Callable[[BaseException | None], None], encode: Callable[[Any], bytes] | None = None):
        self._gen = gen
        self._executor = executor
        self._loop = loop
        self._on_closed = on_closed
        #: framing.item when it may run in a pool thread: items are encoded there, and read ahead.
        self._encode = encode
        self.encoded = encode is not None
        self._lock = threading.Lock()
        # Under the lock: the items waiting for the loop, their bytes, what ended the generator (_END, or what to
        # raise on the loop after the items), whether a thread runs (or is queued to run) `_produce`, whether the
        # stream is closing, the loop's future while it waits for an item, and when a thread woke it.
        self._buf: list[Any] = []
        self._bytes = 0
        self._done: Any = None
        self._running = False
        self._closing = False
        self._waiter: asyncio.Future | None = None
        self._woke_at = 0.0
        self._started = False
        self._exhausted = False  # the generator returned or raised: nothing left to close
        self._closed_reported = False

    # ---------------------------------------------------------------- the loop's side
    async def take(self) -> Any:
        """The items produced since the last take (a non-empty list, in order), or _END once the generator is
        exhausted; raises what the generator raised (or _Unencodable), after the items that came before it."""
        lock = self._lock
        while True:
            with lock:
                buf = self._buf
                if buf:
                    self._buf = []
                    self._bytes = 0
                    self._woke_at = 0.0
                    start = (self.encoded and not self._running and self._done is None and not self._closing)
                    if start:
                        self._running = True
                    waiter = None
                elif self._done is not None:
                    done = self._done
                    if done is _END:
                        return _END
                    raise done
                elif self._closing:  # no step after close(): the generator is (being) closed
                    return _END
                else:
                    waiter = self._waiter = self._loop.create_future()
                    start = not self._running
                    if start:
                        self._running = True
            if start:
                self._start()
            if waiter is None:
                return buf
            await waiter

    def _start(self) -> None:
        """Queue `_produce` for a pool thread (from the loop, or from a thread giving its turn up)."""
        self._started = True
        try:
            self._executor.submit(self._produce).add_done_callback(self._lost)
        except RuntimeError:  # the pool is shut down: the server is stopping
            self._stop_producing(_shutting_down())

    def _lost(self, step: Future) -> None:
        """A `_produce` that never ran (the pool shut down with it queued): end the stream, close the generator."""
        if step.cancelled():
            self._stop_producing(_shutting_down())

    def _stop_producing(self, done: BaseException) -> None:
        with self._lock:
            self._running = False
            if self._done is None:
                self._done = done
            closing = self._closing
            waiter, self._waiter = self._waiter, None
        if waiter is not None:  # from a pool thread too (a turn given up): through the loop
            try:
                self._loop.call_soon_threadsafe(deliver, waiter, None)
            except RuntimeError:  # the loop is closed: the process is exiting
                pass
        if closing:
            self._close_off_loop()

    async def close(self) -> None:
        """Close the generator (its `finally` runs) once no step is running; the slot is freed after that."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            running = self._running
        if running:  # the thread closes it after the step under way (or when it starts, if still queued)
            return
        if self._exhausted:
            self._report_closed(None)
        elif not self._started:  # never started: closing runs none of its code
            self._gen.close()
            self._report_closed(None)
        else:
            self._close_off_loop()

    def _close_off_loop(self) -> None:
        """Close the generator in the pool, or in a thread of its own once the pool is shut down (server stopping)."""
        try:
            self._executor.submit(self._close_here)
        except RuntimeError:
            threading.Thread(target=self._close_here, name="close-stream", daemon=True).start()

    def _report_closed(self, error: BaseException | None) -> None:
        if not self._closed_reported:
            self._closed_reported = True
            self._on_closed(error)

    # ---------------------------------------------------------------- the pool's side
    def _produce(self) -> None:
        gen = self._gen
        encode = self._encode
        lock = self._lock
        wake = self._loop.call_soon_threadsafe
        limit_items = READ_AHEAD_ITEMS if encode is not None else 1
        executor = self._executor
        turn = time.perf_counter()
        while True:
            with lock:
                if self._closing:
                    self._running = False
                    break
            started = time.perf_counter()
            # The end of the stream is a value here: a StopIteration must never reach a future (asyncio refuses it).
            try:
                item = next(gen)
            except StopIteration:
                self._finish(_END)
                return
            except BaseException as err:  # noqa: BLE001 - delivered to the stream, which ends with it
                self._finish(err)
                return
            size = 0
            if encode is not None:
                try:
                    item = encode(item)
                except (TypeError, ValueError) as err:
                    self._finish(_Unencodable(f"{type(item).__name__}: {err}"), exhausted=False)
                    return
                except BaseException as err:  # noqa: BLE001 - e.g. a str subclass's encode(), a MemoryError: the
                    self._finish(err, exhausted=False)  # stream ends with it, as when the loop encoded the items
                    return
                size = len(item)
            now = time.perf_counter()
            with lock:
                self._buf.append(item)
                self._bytes += size
                waiter, self._waiter = self._waiter, None
                if waiter is not None:
                    self._woke_at = now
                stop = not self._closing and (
                    len(self._buf) >= limit_items or self._bytes >= READ_AHEAD_BYTES
                    or (self._woke_at and now - self._woke_at + (now - started) > READ_AHEAD_DELAY))
                if stop:
                    self._running = False
                # Another call waits for a thread and this turn is over: give the thread up, and queue behind that
                # call to go on reading ahead. (Stopping instead left the thread to whichever producer ran while
                # nothing was queued: it read 64 items a turn while the others, always finding one queued, read 1.)
                requeue = not stop and not self._closing and executor.queued and now - turn > READ_AHEAD_TURN
            if waiter is not None:
                try:
                    wake(deliver, waiter, None)
                except RuntimeError:  # the loop is closed: the process is exiting
                    return
            item = None
            if stop:
                return
            if requeue:  # still `_running`: `_produce` again, after the calls queued now
                self._start()
                return
        self._close_here()

    def _finish(self, done: Any, exhausted: bool = True) -> None:
        """The generator returned or raised (or an item could not be encoded): the loop gets `done` after the items."""
        with self._lock:
            self._exhausted = exhausted
            self._done = done
            self._running = False
            closing = self._closing
            waiter, self._waiter = self._waiter, None
        try:
            if waiter is not None:
                self._loop.call_soon_threadsafe(deliver, waiter, None)
            if closing:  # close() left it to this thread
                if exhausted:
                    self._loop.call_soon_threadsafe(self._report_closed, None)
                else:
                    self._close_here()
        except RuntimeError:  # the loop is closed: the process is exiting
            pass

    def _close_here(self) -> None:
        error = None
        try:
            self._gen.close()
        except BaseException as err:  # noqa: BLE001 - e.g. a `finally` that raises or yields: logged
            error = err
        try:
            self._loop.call_soon_threadsafe(self._report_closed, error)
        except RuntimeError:  # the loop is closed: the process is exiting
            pass


class AsyncItems:
    """An async generator driven on the event loop."""

    encoded = False  # take() gives the items as the generator yields them

    def __init__(self, agen: Any, on_closed: Callable[[BaseException | None], None]):
        self._agen = agen
        self._anext = agen.__anext__
        self._on_closed = on_closed
        self._closing = False
        self._steps = 0

    async def take(self) -> Any:
        """The next item, as a list of one, or _END."""
        # One pass of the event loop every YIELD_EVERY items: a generator that never awaits would otherwise keep
        # the loop to itself once its client is gone (a disconnected send returns at once): the disconnect, or a
        # drain, would go unseen until it ends.
        self._steps += 1
        if not self._steps % YIELD_EVERY:
            await asyncio.sleep(0)
        try:
            return [await self._anext()]
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
    """An item the framing could not encode (TypeError/ValueError): logged, the stream ends with a 500 error."""


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
                     else ThreadedGenerator(gen, invoker.executor, loop, self._closed,
                                            self.framing.item if self.framing.pure else None))
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

    def _chunk(self, items: list, encoded: bool) -> bytes:
        """The bytes of the items taken together (encoded here unless the pool already did)."""
        if encoded:
            return b"".join(items)  # one item: that very bytes object
        framing_item = self.framing.item
        item = None
        try:
            if len(items) == 1:
                item = items[0]
                return framing_item(item)
            parts = []
            for item in items:
                parts.append(framing_item(item))
            return b"".join(parts)
        except (TypeError, ValueError) as err:
            raise _Unencodable(f"{type(item).__name__}: {err}") from None

    async def _write(self, items: ThreadedGenerator | AsyncItems, deadline: float) -> tuple[int, str | None]:
        send = self.send
        framing = self.framing
        timeout = self.runtime.timeout
        ticket = self.ticket
        loop = self.runtime.loop
        take = items.take
        encoded = items.encoded
        self._items = items
        started = writing = False
        limit: asyncio.Timeout | None = None  # the deadline of the step under way
        try:
            async with asyncio.timeout_at(deadline) as limit:  # the first item: from arrival, queueing included
                batch = await take()
            if limit.expired():  # an async step that swallowed its cancellation: late all the same
                raise TimeoutError()
            chunk = self._chunk(batch, encoded) if batch is not _END else b""
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", self.framing.content_type), (b"x-request-id", self.request_id.encode("latin-1")),
                *STREAM_HEADERS,
            ]})
            started = True
            while batch is not _END:
                writing = True
                # One step: hand these items over, take the next. Its deadline is the ticket's: a step still
                # running past it is a stuck call (lifecycle.Lifecycle.scan).
                ticket.deadline = step_deadline = loop.time() + timeout
                async with asyncio.timeout_at(step_deadline) as limit:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    if self.started_at:
                        self.runtime.metrics.first_item.observe(time.perf_counter() - self.started_at)
                        self.started_at = 0.0
                    writing = False
                    batch = _END if framing.complete else await take()
                if limit.expired():
                    raise TimeoutError()
                if batch is not _END:
                    chunk = self._chunk(batch, encoded)
            self.finished = True
            await items.close()  # exhausted (or complete): the call is over before the last bytes go out
            await self._send_last(framing.end())
            return 200, None
        except asyncio.CancelledError as err:
            reason = self.stop_reason
            task = asyncio.current_task()
            if reason is None and task is not None and not task.cancelling():
                # Raised by the predictor itself (nothing cancelled this task): a failure, as for a plain predict.
                return await self._failed(err, started)
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
        except _Unencodable as err:
            message = "a streamed item could not be encoded; see the server log"
            if not started:  # logged by the caller (endpoint.handle_predict), which answers with the JSON error
                raise ServerFault(message, "a streamed item could not be encoded", str(err)) from None
            self.runtime.log.event("error", "a streamed item could not be encoded", api=self.runtime.name,
                                   request_id=self.request_id, error=str(err))
            return await self._end_with(HTTPError(500, "internal", message))
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
