"""One served API: its predictor, admission, batching, metrics, and the predict hot path.

`ApiRuntime.handle` is a plain ASGI handler for `POST <endpoint>`: read the
body (bounded), decode, admit or refuse, run predict off the event loop (or
await it, for `async def predict`), encode, respond, then record the log
line and metrics.
"""

from __future__ import annotations

import asyncio
import enum
import hmac
import itertools
import threading
import os
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from starlette.datastructures import Headers, QueryParams
from starlette.responses import Response

from . import codec
from .admission import AdmissionControl
from .batching import Batcher
from .errors import HTTPError, PredictorError, error_body, overloaded
from .loader import LoadError, Predictor, load_predictor
from .logs import RequestLog
from .metrics import ApiMetrics
from .spec import ApiSpec


class State(str, enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    DRAINING = "draining"
    STOPPED = "stopped"


class Timeout(HTTPError):
    def __init__(self, seconds: float):
        super().__init__(504, "timeout", f"no prediction within the {seconds:g}s timeout (serving.timeout)")


_ids = itertools.count(1)
_ID_PREFIX = os.urandom(4).hex()


def new_request_id() -> str:
    return f"{_ID_PREFIX}-{next(_ids):x}"


def _expire(fut: asyncio.Future, seconds: float) -> None:
    if not fut.done():  # the exception is built only when a deadline really passes
        fut.set_exception(Timeout(seconds))


class ApiRuntime:
    def __init__(self, folder: Path, spec: ApiSpec, metrics: ApiMetrics, log: RequestLog, processes: int | None = None):
        self.folder = Path(folder)
        self.spec = spec
        self.name = spec.name
        self.endpoint = spec.endpoint
        self.metrics = metrics
        self.log = log
        self.state = State.LOADING
        self.load_error: LoadError | None = None
        self.predictor: Predictor | None = None
        serving = spec.serving
        # Per-replica limits are shared across the replica's processes (`myelin local` runs one process).
        self.max_concurrency = serving.per_process(serving.max_concurrency, processes)
        self.max_queue_length = serving.per_process(serving.max_queue_length, processes)
        self.timeout = serving.timeout.seconds
        self.max_body = serving.max_body_bytes
        self.in_flight = 0
        self.admission = AdmissionControl(self.max_concurrency, self.max_queue_length)
        self.batcher: Batcher | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: asyncio.Event | None = None
        self._api_keys: list[bytes] = []
        self._auth_header = b""

    # ---------------------------------------------------------------- lifecycle
    def load(self) -> None:
        """Blocking: import and construct the predictor (called in a thread; the loop keeps answering probes)."""
        try:
            auth = self.spec.networking.auth
            if auth is not None:
                raw = os.environ.get(auth.api_keys_env, "")
                keys = [k.strip() for k in raw.split(",") if k.strip()]
                if not keys:
                    raise LoadError(
                        self.name, f"{self.folder / 'api.yaml'} networking.auth.api_keys_env",
                        f"environment variable {auth.api_keys_env} is empty or unset; refusing to serve without keys",
                    )
                self._api_keys = [k.encode() for k in keys]
                self._auth_header = auth.header.encode()
            predictor = load_predictor(self.folder, self.spec)
        except LoadError as err:
            self.load_error = err
            self.state = State.FAILED
            return
        except Exception as err:  # noqa: BLE001 - e.g. a bad predictor.env value: fail clearly, never hang in LOADING
            self.load_error = LoadError(self.name, str(self.folder / "api.yaml"), f"{type(err).__name__}: {err}",
                                        traceback.format_exc())
            self.state = State.FAILED
            return
        self._executor = ThreadPoolExecutor(self.spec.serving.threads, thread_name_prefix=f"predict-{self.name}")
        self.predictor = predictor
        extras = tuple(n for n, want in (("query_params", predictor.wants_query_params), ("headers", predictor.wants_headers)) if want)
        if self.spec.batching is not None:
            self.batcher = Batcher(
                self._call, self.spec.batching.max_batch_size, self.spec.batching.max_batch_delay.seconds,
                self.max_concurrency, self.max_queue_length,
                # a sync predict runs one batch per thread; async batches overlap on the loop
                self.max_concurrency if predictor.is_async else self.spec.serving.threads,
                extras, self.metrics.batch_size.observe,
            )
        if self.state is State.LOADING:  # a drain that began during the load wins
            self.state = State.READY

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        self._idle.set()
        # A private daemon thread, not the loop's default executor: interpreter shutdown would wait for
        # that one, so a SIGTERM during a long model load could not exit within the grace period.
        loaded = self._loop.create_future()
        loop = self._loop

        def load_in_thread() -> None:
            try:
                self.load()
            finally:
                try:
                    loop.call_soon_threadsafe(_deliver, loaded, None)
                except RuntimeError:  # the loop closed while loading: the process is exiting
                    pass

        threading.Thread(target=load_in_thread, name=f"load-{self.name}", daemon=True).start()
        await loaded
        if self.state is State.FAILED and self.load_error is not None:
            self.log.event(
                "error", "predictor failed to load", api=self.name, where=self.load_error.where,
                error=self.load_error.message, traceback=self.load_error.detail or None,
            )

    def begin_drain(self) -> None:
        if self.state is State.READY or self.state is State.LOADING:
            self.state = State.DRAINING

    async def drained(self, timeout: float) -> bool:
        """Wait until no request is in flight (True), or the timeout passes (False)."""
        if self._idle is None or self.in_flight == 0:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def close(self) -> None:
        self.state = State.STOPPED
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def waiting(self) -> int:
        return self.batcher.waiting if self.batcher is not None else self.admission.waiting

    def sample_metrics(self) -> None:
        self.metrics.sample(self.in_flight, self.waiting, self.state is State.READY)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"name": self.name, "endpoint": self.endpoint, "state": self.state.value,
                                "folder": str(self.folder), "in_flight": self.in_flight, "queued": self.waiting}
        if self.load_error is not None:
            info["error"] = {"where": self.load_error.where, "message": self.load_error.message}
        return info

    # ---------------------------------------------------------------- execution
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
                loop.call_soon_threadsafe(_deliver_error, fut, err)
            else:
                loop.call_soon_threadsafe(_deliver, fut, result)

        return fut, self._executor.submit(run)

    async def _execute(self, payload: Any, kwargs: dict[str, Any], deadline: float) -> Any:
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
        if waiter is not None:
            try:
                await asyncio.wait_for(waiter, deadline - loop.time())
            except asyncio.TimeoutError:
                admission.abandon(waiter)
                raise Timeout(self.timeout) from None
            except BaseException:
                admission.abandon(waiter)
                raise
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

    # ---------------------------------------------------------------- hot path
    async def handle(self, scope: dict, receive: Any, send: Any) -> None:
        start = time.perf_counter()
        deadline = self._loop.time() + self.timeout if self._loop else 0.0
        content_type = b""
        content_length = -1
        request_id = ""
        api_key = b""
        authorization = b""
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value
            elif key == b"content-length":
                try:
                    content_length = int(value)
                except ValueError:
                    content_length = -1
            elif key == b"x-request-id":
                request_id = value.decode("latin-1")[:128]
            elif key == self._auth_header:
                api_key = value
            elif key == b"authorization":
                authorization = value
        if not request_id:
            request_id = new_request_id()
        status = 500
        error_type = None
        counted = False
        try:
            if self.state is not State.READY:
                raise self._not_ready()
            # In flight from here, while the body is still arriving: a drain or reload waits for it.
            self.in_flight += 1
            counted = True
            self._idle.clear()
            if self._api_keys:
                self._authenticate(api_key, authorization)
            if content_length > self.max_body:
                raise _too_large(self.max_body)
            body = await _read_body(receive, self.max_body)
            payload = await codec.decode(content_type, body)
            kwargs = self._extras(scope) if self.predictor.wants_query_params or self.predictor.wants_headers else {}
            result = await self._execute(payload, kwargs, deadline)
            if isinstance(result, Response):
                result.headers.setdefault("x-request-id", request_id)
                await result(scope, receive, send)
                status = result.status_code
            else:
                try:
                    body_out, ctype = codec.encode(result)
                except TypeError as err:
                    raise _ServerFault(str(err)) from None
                await send({"type": "http.response.start", "status": 200, "headers": [
                    (b"content-type", ctype), (b"content-length", str(len(body_out)).encode()),
                    (b"x-request-id", request_id.encode("latin-1")),
                ]})
                await send({"type": "http.response.body", "body": body_out})
                status = 200
        except HTTPError as err:
            status, error_type = err.status_code, err.error_type
            await _send_error(send, status, error_type, err.message, request_id, err.headers)
        except PredictorError as err:
            status, error_type = err.status_code, err.error_type
            await _send_error(send, status, error_type, err.message, request_id)
        except _ServerFault as err:
            status, error_type = 500, "internal"
            self.log.event("error", "result could not be encoded", api=self.name, request_id=request_id, error=str(err))
            await _send_error(send, 500, "internal", "the predictor's result could not be encoded; see the server log", request_id)
        except _ClientGone:
            if scope.get("myelin.read_timeout"):  # the body stalled; protection.py answered 408
                status, error_type = 408, "request_timeout"
            else:
                status, error_type = 499, "client_disconnected"
        except asyncio.CancelledError:
            # Cancelled by the server's shutdown: answer in the contract's shape if nothing was sent yet.
            status, error_type = 503, "shutting_down"
            try:
                await _send_error(send, 503, "shutting_down", "the server shut down before the prediction finished",
                                  request_id, [(b"retry-after", b"1"), (b"connection", b"close")])
            except Exception:  # noqa: BLE001 - a response had already started, or the connection is gone
                status = 499
            raise
        except Exception as err:  # noqa: BLE001 - predictor failure: details to the log, not the client
            status, error_type = 500, "predictor_failure"
            self.log.event(
                "error", "predict raised", api=self.name, request_id=request_id, error=f"{type(err).__name__}: {err}",
                traceback="".join(traceback.format_exception(err)),
            )
            await _send_error(send, 500, "predictor_failure", "the predictor failed; see the server log", request_id)
        finally:
            if counted:
                self.in_flight -= 1
                if self.in_flight == 0:
                    self._idle.set()
            latency = time.perf_counter() - start
            self.metrics.observe(status, latency)
            self.log.request(self.name, request_id, "POST", scope["path"], status, latency, error_type)

    def _not_ready(self) -> HTTPError:
        if self.state is State.FAILED and self.load_error is not None:
            return HTTPError(503, "not_ready", f"API {self.name} failed to load: {self.load_error}",
                             [(b"retry-after", b"30")])
        if self.state is State.DRAINING:
            err = overloaded(f"API {self.name} is shutting down; retry on another replica")
            err.error_type = "shutting_down"
            err.headers.append((b"connection", b"close"))
            return err
        return HTTPError(503, "not_ready", f"API {self.name} is {self.state.value}", [(b"retry-after", b"1")])

    def _authenticate(self, api_key: bytes, authorization: bytes) -> None:
        presented = api_key or authorization
        if presented[:7].lower() == b"bearer ":  # `Authorization: Bearer <key>`, or a custom header holding the same
            presented = presented[7:].strip()
        ok = False
        for key in self._api_keys:  # compare against every key, so timing reveals nothing about which matched
            ok |= hmac.compare_digest(presented, key)
        if not ok:
            raise HTTPError(401, "unauthorized", "missing or invalid API key", [(b"www-authenticate", b"ApiKey")])

    def _extras(self, scope: dict) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.predictor.wants_query_params:
            kwargs["query_params"] = QueryParams(scope.get("query_string", b""))
        if self.predictor.wants_headers:
            kwargs["headers"] = Headers(scope=scope)
        return kwargs


class _ServerFault(Exception):
    pass


class _ClientGone(Exception):
    pass


def _deliver(fut: asyncio.Future, result: Any) -> None:
    if not fut.done():
        fut.set_result(result)


def _deliver_error(fut: asyncio.Future, err: BaseException) -> None:
    if not fut.done():
        fut.set_exception(err)


def _too_large(limit: int) -> HTTPError:
    return HTTPError(413, "payload_too_large", f"request body exceeds the {limit} byte limit (serving.max_body_size)",
                     [(b"connection", b"close")])


async def _read_body(receive: Any, limit: int) -> bytes:
    message = await receive()
    if message["type"] == "http.disconnect":
        raise _ClientGone()
    body = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise _too_large(limit)
        return body
    chunks = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:  # stop reading: never hold more than the limit in memory
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send_error(send: Any, status: int, error_type: str, message: str, request_id: str,
                      headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = error_body(error_type, message, request_id)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode("latin-1")), *(headers or []),
    ]})
    await send({"type": "http.response.body", "body": body})
