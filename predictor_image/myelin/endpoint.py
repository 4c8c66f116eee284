"""The one request lifecycle, and the hot path of `POST <endpoint>`.

`handle_predict` takes every prediction request, native or through a protocol's front door
(protocols.py: OpenAI, OIP): access, readiness, admission (its `lifecycle.Ticket`, before a byte of
the body is read), then the work: natively read the body (bounded), decode, run it through the API's
`Invoker` (or stream it), encode, respond; a protocol's work does the same in its own shapes. Then,
whatever happened, the ticket's release, the request metrics and one log line, after the response.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from starlette.datastructures import Headers, QueryParams
from starlette.responses import Response

from . import codec
from .errors import HTTPError, PredictorError, ServerFault
from .http_io import ClientGone, RequestHead, respond_whole, send_body, send_error, too_large
from .invoke import PredictorFailure
from .runtime import ApiRuntime, State
from .streaming import stream_response

if TYPE_CHECKING:
    from .lifecycle import Ticket

Send = Callable[[dict], Awaitable[None]]
#: A protocol's work once its request is admitted: (runtime, scope, receive, send, head, ticket) -> the (status,
#: error type) to count and log.
Work = Callable[[ApiRuntime, dict, Any, Send, RequestHead, "Ticket"], Awaitable[tuple[int, "str | None"]]]
#: Writes a protocol's error response: (send, status, error type, message, request id, extra headers, param).
ErrorWriter = Callable[..., Awaitable[None]]


def held_too_long(runtime: ApiRuntime, held: float) -> HTTPError:
    return HTTPError(503, "not_ready", f"API {runtime.name} was starting (scaled from zero); this request waited "
                     f"{held:.0f}s, past serving.timeout ({runtime.timeout:g}s): retry now, it is ready",
                     [(b"retry-after", b"1")])


def _extras(runtime: ApiRuntime, scope: dict) -> dict[str, Any]:
    predictor = runtime.predictor
    kwargs: dict[str, Any] = {}
    if predictor.wants_query_params:
        kwargs["query_params"] = QueryParams(scope.get("query_string", b""))
    if predictor.wants_headers:
        kwargs["headers"] = Headers(scope=scope)
    return kwargs


async def handle_predict(runtime: ApiRuntime, scope: dict, receive: Any, send: Any, work: Work | None = None,
                         write_error: ErrorWriter | None = None) -> None:
    """One request, from its head to its log line. Without `work`, the native route (inline: the hot path);
    with it, a protocol's request (`work` after admission, errors written by `write_error`)."""
    start = time.perf_counter()
    loop = runtime.loop
    deadline = loop.time() + runtime.timeout if loop else 0.0
    keys = runtime.api_keys
    head = RequestHead(scope["headers"], keys.header if keys is not None else b"")
    request_id = head.request_id
    status = 500
    error_type = None
    ticket = None
    try:
        if keys is not None:  # authentication first: an unauthenticated client learns nothing about the API
            keys.check(head)
        if runtime.state is not State.READY:
            raise runtime.not_ready(request_id)
        if runtime.arrival is not None:  # scaled to zero: the deadline counts from arrival at the load balancer
            held = runtime.arrival.held_seconds(scope["headers"], runtime.ready_at)
            deadline -= min(held, runtime.timeout)
            if held >= runtime.timeout:
                raise held_too_long(runtime, held)
        if head.content_length > runtime.max_body:
            raise too_large(runtime.max_body)
        # Admitted (in flight) from here, before the body is read; refused with 503 at once when full.
        ticket = runtime.lifecycle.admit(head.content_length, deadline)
        if work is not None:
            status, error_type = await work(runtime, scope, receive, send, head, ticket)
            return
        body = await ticket.read_body(receive, runtime.max_body)
        payload = codec.decode_json(body) if head.content_type == codec.JSON else await codec.decode(head.content_type, body)
        predictor = runtime.predictor
        kwargs = _extras(runtime, scope) if predictor.wants_query_params or predictor.wants_headers else {}
        if predictor.streams:  # a generator predict: items go out as they come (streaming.py)
            status, error_type = await stream_response(runtime, payload, kwargs, ticket, scope, receive, send,
                                                       request_id, start)
            return
        result = await runtime.invoker.invoke(payload, kwargs, ticket)
        draining = runtime.state is State.DRAINING
        if isinstance(result, Response):
            result.headers.setdefault("x-request-id", request_id)
            if draining:
                result.headers["connection"] = "close"
            await result(scope, receive, send)
            status = result.status_code
        else:
            try:
                body_out, ctype = codec.encode(result)
            except TypeError as err:
                raise ServerFault("the predictor's result could not be encoded; see the server log",
                                  "result could not be encoded", str(err)) from None
            if not respond_whole(send, 200, body_out, ctype, request_id, draining):
                await send_body(send, 200, body_out, ctype, request_id, draining)
            status = 200
            if ctype is codec.JSON and b"null" in body_out and codec.has_nonfinite(result):
                runtime.log.event("warning", "result has NaN or Infinity, sent as null (JSON has neither)",
                                  api=runtime.name, request_id=request_id)
    except HTTPError as err:
        status, error_type = err.status_code, err.error_type
        if status == 503:  # refused before running: overloaded, not_ready or shutting_down
            runtime.metrics.reject(error_type)
        elif isinstance(err, ServerFault):
            runtime.log.event("error", err.log_message, api=runtime.name, request_id=request_id, error=err.detail)
        elif status >= 500 and status != 504:  # a fault of the server's (e.g. a protocol's result shape): logged
            runtime.log.event("error", err.message, api=runtime.name, request_id=request_id)
        await _write_error(write_error, send, status, error_type, err.message, request_id, err.headers,
                           getattr(err, "param", None))
    except PredictorError as err:
        status, error_type = err.status_code, err.error_type
        await _write_error(write_error, send, status, error_type, err.message, request_id)
    except ClientGone:
        if scope.get("myelin.read_timeout"):  # the body stalled; protection.py answered 408
            status, error_type = 408, "request_timeout"
        else:
            status, error_type = 499, "client_disconnected"
    except asyncio.CancelledError:
        # Cancelled by the server's shutdown: answer in the contract's shape if nothing was sent yet.
        status, error_type = 503, "shutting_down"
        try:
            await _write_error(write_error, send, 503, "shutting_down",
                               "the server shut down before the prediction finished", request_id,
                               [(b"retry-after", b"1"), (b"connection", b"close")])
        except Exception:  # noqa: BLE001 - a response had already started, or the connection is gone
            status = 499
        raise
    except Exception as err:  # noqa: BLE001 - predictor failure: details to the log, not the client
        status, error_type = 500, "predictor_failure"
        original = err.original if isinstance(err, PredictorFailure) else err
        runtime.log.event(
            "error", "predict raised", api=runtime.name, request_id=request_id,
            error=f"{type(original).__name__}: {original}", traceback="".join(traceback.format_exception(original)),
        )
        await _write_error(write_error, send, 500, "predictor_failure", "the predictor failed; see the server log",
                           request_id)
    finally:
        if ticket is not None:
            ticket.finish()
        latency = time.perf_counter() - start
        runtime.metrics.observe(status, latency)
        runtime.log.request(runtime.name, request_id, scope["method"], scope["path"], status, latency, error_type)


async def _write_error(write_error: ErrorWriter | None, send: Send, status: int, error_type: str, message: str,
                       request_id: str, headers: list[tuple[bytes, bytes]] | None = None,
                       param: str | None = None) -> None:
    """The error response: Myelin's JSON shape natively, the protocol's own through its `write_error`."""
    if write_error is None:
        await send_error(send, status, error_type, message, request_id, headers)
    else:
        await write_error(send, status, error_type, message, request_id, headers, param)
