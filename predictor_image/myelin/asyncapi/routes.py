"""An AsyncAPI's HTTP front door: `POST /<endpoint>` submits a job, `GET /<endpoint>/<id>` reads it.

Plain ASGI beside the realtime hot path, with the same pieces (bounded body read, API keys, codec,
JSON errors, request ids, one log line and the request metrics per request). A submit answers 202
only after the store has the payload durably.

Results in the status document: a JSON result (dict, list, number, ...) is embedded as JSON; a
`str` (text/*) as a JSON string; bytes (any other content type) as base64 with
`"result_encoding": "base64"`. The store keeps the encoded result and its content type, so the
same answer comes back however often it is read.
"""

from __future__ import annotations

import asyncio
import base64
import time
import traceback
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import orjson

from .. import codec
from .. import contract as c
from ..errors import HTTPError
from ..http_io import ClientGone, RequestHead, send_body, send_error, too_large
from ..lifecycle import Ticket
from ..runtime import State
from .store import COMPLETED, JobState, Submission, new_job_id, valid_job_id

if TYPE_CHECKING:
    from .runtime import AsyncApiRuntime

#: Request headers never stored with a job (credentials; the length describes the old request).
_NOT_STORED = frozenset({b"authorization", b"proxy-authorization", b"cookie", b"content-length"})


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def status_document(state: JobState) -> bytes:
    """`{"id", "status", "created_at", "started_at"?, "finished_at"?, "result"?, "error"?}` as JSON bytes."""
    doc: dict[str, Any] = {"id": state.id, "status": state.status, "created_at": iso(state.created_at)}
    if state.started_at is not None:
        doc["started_at"] = iso(state.started_at)
    if state.finished_at is not None:
        doc["finished_at"] = iso(state.finished_at)
    if state.error is not None:
        doc["error"] = state.error
    if state.status != COMPLETED or state.result is None:
        return orjson.dumps(doc)
    mtype, charset = codec.media_type((state.result_type or "").encode("latin-1"))
    if mtype == b"application/json":  # stored by the worker as valid JSON: embedded without re-parsing
        return orjson.dumps(doc)[:-1] + b',"result":' + state.result + b"}"
    if mtype.startswith(b"text/"):
        try:
            doc["result"] = state.result.decode(charset.decode("latin-1"))
            return orjson.dumps(doc)
        except (UnicodeError, LookupError):
            pass
    doc["result"] = base64.b64encode(state.result).decode("ascii")
    doc["result_encoding"] = "base64"
    return orjson.dumps(doc)


def _stored_headers(headers: list[tuple[bytes, bytes]], key_header: bytes) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers if k not in _NOT_STORED and k != key_header]


Handler = Callable[[RequestHead, str, Ticket], Awaitable[tuple[int, bytes, list[tuple[bytes, bytes]]]]]


async def _serve(runtime: "AsyncApiRuntime", scope: dict, receive: Any, send: Any, states: tuple[State, ...],
                 handler: Handler, admit: bool) -> None:
    """What both routes share: state and key checks, the request's ticket (lifecycle.py: admitted before the
    body is read when `admit`, else only counted in flight), JSON errors, log line, metrics."""
    start = time.perf_counter()
    keys = runtime.api_keys
    head = RequestHead(scope["headers"], keys.header if keys is not None else b"")
    request_id = head.request_id
    status, error_type, ticket = 500, None, None
    try:
        if not runtime.serves_requests:
            raise HTTPError(404, "not_found", f"this process is an AsyncAPI worker ({c.ROLE_WORKER}): submit jobs and "
                                              "read them through the gateway")
        if keys is not None:  # before anything else, as for a RealtimeAPI: no key, nothing learnt
            keys.check(head)
        if runtime.state not in states:
            raise runtime.not_ready(request_id)
        deadline = runtime.loop.time() + runtime.timeout
        if admit:
            if head.content_length > runtime.max_body:
                raise too_large(runtime.max_body)
            ticket = runtime.lifecycle.admit(head.content_length, deadline)
        else:
            ticket = runtime.lifecycle.enter(deadline)
        status, body, headers = await handler(head, request_id, ticket)
        await send_body(send, status, body, codec.JSON, request_id, extra=headers)
    except HTTPError as err:
        status, error_type = err.status_code, err.error_type
        await send_error(send, status, error_type, err.message, request_id, err.headers)
    except ClientGone:
        status, error_type = (408, "request_timeout") if scope.get("myelin.read_timeout") else (499, "client_disconnected")
    except asyncio.CancelledError:
        # Cancelled by the server's shutdown: answer in the contract's shape if nothing was sent yet.
        status, error_type = 503, "shutting_down"
        try:
            await send_error(send, 503, error_type, "the server shut down before answering", request_id,
                             [(b"retry-after", b"1"), (b"connection", b"close")])
        except Exception:  # noqa: BLE001 - a response had already started, or the connection is gone
            status = 499
        raise
    except Exception as err:  # noqa: BLE001 - the store failed: the client may retry; details to the log
        status, error_type = 503, "store_unavailable"
        runtime.log.event("error", "job store call failed", api=runtime.name, request_id=request_id,
                          error=f"{type(err).__name__}: {err}", traceback="".join(traceback.format_exception(err)))
        await send_error(send, 503, error_type, "the job store is unavailable; retry later (see the server log)",
                         request_id, [(b"retry-after", b"1")])
    finally:
        if ticket is not None:
            ticket.finish()
        latency = time.perf_counter() - start
        runtime.metrics.observe(status, latency)
        runtime.log.request(runtime.name, request_id, scope["method"], scope["path"], status, latency, error_type)


async def submit_job(runtime: "AsyncApiRuntime", scope: dict, receive: Any, send: Any) -> None:
    """`POST /<endpoint>` -> 202 `{"id"}` with `Location: /<endpoint>/<id>`, once the payload is stored."""

    async def store(head: RequestHead, request_id: str, ticket: Ticket) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        await runtime.check_room(head.content_length)  # jobs.max_queued / max_stored_bytes: 503 before the body
        body = await ticket.read_body(receive, runtime.max_body)
        await codec.decode(head.content_type, body)  # what the worker could not decode is refused now, with 400
        keys = runtime.api_keys
        job = Submission(id=new_job_id(), body=body, content_type=head.content_type.decode("latin-1"),
                         query_string=scope.get("query_string", b"").decode("latin-1"),
                         headers=_stored_headers(scope["headers"], keys.header if keys is not None else b""),
                         created_at=time.time())
        await runtime.store.enqueue(job)
        runtime.jobs.count(c.JOB_SUBMITTED)
        return 202, orjson.dumps({"id": job.id}), [(b"location", f"{runtime.endpoint}/{job.id}".encode())]

    await _serve(runtime, scope, receive, send, (State.READY,), store, admit=True)


async def job_status(runtime: "AsyncApiRuntime", job_id: str, scope: dict, receive: Any, send: Any) -> None:
    """`GET /<endpoint>/<id>` -> 200 with the status document, or 404 (unknown, or past the retention)."""

    async def read(head: RequestHead, request_id: str, ticket: Ticket) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        state = await runtime.store.get(job_id) if valid_job_id(job_id) else None
        if state is None:
            raise HTTPError(404, "not_found", f"no job {job_id!r} at {runtime.endpoint}: unknown, or older than "
                                              f"jobs.retention ({runtime.spec.jobs.retention})")
        return 200, status_document(state), []

    # Reads stay possible while draining: jobs submitted here must remain visible until the end.
    await _serve(runtime, scope, receive, send, (State.READY, State.DRAINING), read, admit=False)



def document_job_routes(app: Any, runtime: "AsyncApiRuntime") -> None:
    """Describe submit and status in OpenAPI. Requests never reach these routes: MyelinApp answers them first."""
    from fastapi import Path as PathParam
    from starlette.responses import Response

    body_schema = {"content": {
        "application/json": {"schema": {}}, "text/plain": {"schema": {"type": "string"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    }}
    errors = {"401": {"description": "Missing or invalid API key"}, "503": {"description": "Loading, draining, the "
              "job store is unavailable, or full (jobs.max_queued, jobs.max_stored_bytes), with Retry-After"}}

    async def documented_submit() -> Response:  # pragma: no cover - shadowed by MyelinApp
        return Response(status_code=202)

    async def documented_status(job_id: str = PathParam(..., pattern="^[0-9a-f]{32}$")) -> Response:  # pragma: no cover
        return Response()

    app.add_api_route(
        runtime.endpoint, documented_submit, methods=["POST"], status_code=202, name=f"{runtime.name}-submit",
        summary=f"Submit a job to {runtime.name}", openapi_extra={"requestBody": body_schema},
        responses={"202": {"description": 'Stored: `{"id"}`, and `Location: <endpoint>/<id>`'},
                   "400": {"description": "Malformed input"}, "413": {"description": "Body too large"}, **errors})
    app.add_api_route(
        f"{runtime.endpoint}/{{job_id}}", documented_status, methods=["GET"], name=f"{runtime.name}-status",
        summary=f"A job of {runtime.name}: status, result or error",
        responses={"200": {"description": "status in_queue, in_progress, completed or failed"},
                   "404": {"description": "Unknown job, or past jobs.retention"}, **errors})
