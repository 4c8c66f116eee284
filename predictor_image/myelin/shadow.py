"""A TrafficSplitter's shadow: a copy of each of the splitter's requests, sent in the background, its answer read
and thrown away. Its errors and slowness are counted and never reach the client.

Two places make the copies, with the same bounds, metrics and reasons (this module):

- `myelin local`'s router (local/splitter.py), once the request's body is complete;
- in the cloud, the runtime of each API the splitter weighs (`ShadowMirror`, set up by server.py from
  MYELIN_SHADOW_TARGETS): the ALB forwards each request to one API and cannot copy it, so the API that answers a
  request on the splitter's path (MYELIN_ENDPOINT_ALIASES) copies it to the shadow's in-cluster Service, after its
  own answer is written.

Every copy has an owner and a bound, per splitter: at most `SHADOW_MAX_IN_FLIGHT` copies in flight and at most
`SHADOW_MAX_BUFFERED_BYTES` of copied bodies held. A request beyond either, larger than the shadow's
serving.max_body_size, or whose body its API never read whole, is not copied and is counted in
myelin_shadow_dropped_total{splitter,api,reason}; each copy sent is counted in
myelin_shadow_requests_total{splitter,api,status} (the shadow's HTTP status, or `error` / `timeout`).
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import httpx
from prometheus_client import Counter

from . import contract as c
from .http_io import MAX_REQUEST_ID, declared_length, has_header, new_request_id
from .settings import ShadowTarget

#: Copies of requests in flight to the shadow, per splitter; one beyond is dropped (reason "busy").
SHADOW_MAX_IN_FLIGHT = 64
#: Bytes of request bodies held for the shadow, per splitter; a copy beyond is dropped (reason "buffer_full").
SHADOW_MAX_BUFFERED_BYTES = 64 * 2**20
#: A copy still unanswered this long after the shadow's serving.timeout is abandoned (status "timeout").
SHADOW_GRACE_S = 5.0

DROP_BUSY = "busy"
DROP_BUFFER = "buffer_full"
DROP_TOO_LARGE = "too_large"
DROP_NOT_READY = "not_ready"  # myelin local: the shadow's process is not serving
DROP_CLIENT_GONE = "client_gone"
DROP_NOT_READ = "not_read"  # the API refused the request before reading its body (401, 413, 503)

#: Request headers a copy does not carry (the cloud's copies): hop-by-hop ones, the framing (the copy is framed
#: again, with its own Content-Length) and the Host (the shadow's Service's, set by the client).
_COPY_DROP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade", b"expect",
              b"proxy-authenticate", b"proxy-authorization", b"transfer-encoding", b"content-length", b"host"}


def shadow_counters(registry: Any) -> tuple[Counter, Counter]:
    """myelin_shadow_requests_total{splitter,api,status} and myelin_shadow_dropped_total{splitter,api,reason}:
    the router's (`myelin local`) and, in the cloud, each weighted API's."""
    labels = [c.LABEL_SPLITTER, c.LABEL_API]
    sent = Counter(c.SHADOW_REQUESTS, "Copies of a splitter's requests answered by its shadow (status: the shadow's "
                   "HTTP status, or error/timeout).", [*labels, c.LABEL_STATUS], registry=registry)
    dropped = Counter(c.SHADOW_DROPPED, "Requests of a splitter not copied to its shadow, by reason.",
                      [*labels, c.LABEL_REASON], registry=registry)
    return sent, dropped


class ShadowSlots:
    """One splitter's copies: the bounds (in flight, bytes held), the counts /info shows, the metric series."""

    def __init__(self, splitter: str, shadow: str, sent: Counter, dropped: Counter):
        self.splitter = splitter
        self.shadow = shadow
        self.sent = sent
        self.dropped_series = dropped
        self.in_flight = 0
        self.buffered = 0
        self.answered = 0
        self.failed = 0
        self.dropped: dict[str, int] = {}

    def describe(self) -> dict[str, Any]:
        return {"name": self.shadow, "in_flight": self.in_flight, "answered": self.answered, "failed": self.failed,
                "dropped": dict(self.dropped)}

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        self.dropped_series.labels(self.splitter, self.shadow, reason).inc()

    def take(self, declared: int | None, max_body: int) -> bool:
        """A slot for one request's copy (released by `done` or `abandon`); False, counted, when there is none."""
        if self.in_flight >= SHADOW_MAX_IN_FLIGHT:
            self.drop(DROP_BUSY)
            return False
        if declared is not None and declared > max_body:
            self.drop(DROP_TOO_LARGE)
            return False
        self.in_flight += 1
        return True

    def reserve(self, size: int) -> bool:
        if self.buffered + size > SHADOW_MAX_BUFFERED_BYTES:
            return False
        self.buffered += size
        return True

    def abandon(self, reason: str, reserved: int) -> None:
        """A slot given back without a copy sent."""
        self.buffered -= reserved
        self.in_flight -= 1
        self.drop(reason)

    def done(self, status: str, reserved: int) -> None:
        """A copy sent and answered (or failed): its slot and bytes given back, its status counted."""
        self.buffered -= reserved
        self.in_flight -= 1
        if status.isdigit() and int(status) < 500:
            self.answered += 1
        else:
            self.failed += 1
        self.sent.labels(self.splitter, self.shadow, status).inc()


def has_no_body(headers: list[tuple[bytes, bytes]]) -> bool:
    declared = declared_length(headers)
    return declared == 0 or (declared is None and not has_header(headers, b"transfer-encoding"))


class BodyCopy:
    """The client's body as its API reads it, copied for the shadow until it is complete. Complete, it goes to
    `then` (with the bytes it holds reserved), or is kept for `take_body`; over a bound, the copy is given up."""

    def __init__(self, slots: ShadowSlots, max_body: int, then: Callable[[bytes, int], None] | None = None,
                 body: bytes | None = None):
        self.slots = slots
        self.max_body = max_body
        self.then = then
        self.parts: list[bytes] | None = [] if body is None else None
        self.body = body  # complete, not yet handed over
        self.size = 0

    def give_up(self, reason: str) -> None:
        """No copy after all (over a bound, the client left, or the body was never read whole)."""
        if self.parts is not None or self.body is not None:
            self.parts = self.body = None
            self.slots.abandon(reason, self.size)

    def take_body(self) -> bytes | None:
        """The complete body, now the caller's (with `size` bytes reserved); None if it never was complete."""
        body, self.body = self.body, None
        return body

    def receive_from(self, receive: Callable[[], Awaitable[dict]]) -> Callable[[], Awaitable[dict]]:
        async def tee() -> dict:
            message = await receive()
            if self.parts is None:
                return message
            if message["type"] == "http.disconnect":
                self.give_up(DROP_CLIENT_GONE)
                return message
            chunk = message.get("body", b"")
            if chunk:
                if self.size + len(chunk) > self.max_body:
                    self.give_up(DROP_TOO_LARGE)
                    return message
                if not self.slots.reserve(len(chunk)):
                    self.give_up(DROP_BUFFER)
                    return message
                self.size += len(chunk)
                self.parts.append(chunk)
            if not message.get("more_body", False):
                body, self.parts = b"".join(self.parts), None
                if self.then is not None:
                    self.then(body, self.size)
                else:
                    self.body = body
            return message

        return tee


async def deliver(client: httpx.AsyncClient, request: Callable[[], httpx.Request], timeout: float) -> str:
    """Build one copy, send it, read its answer to the end without keeping it: the shadow's status, `timeout` or
    `error`. Never raises (but for cancellation): whatever happens here is the shadow's, not the client's (a
    header httpx cannot send again, a refused connection, a shadow that never answers)."""
    try:
        return str(await asyncio.wait_for(_discard(client, request()), timeout))
    except asyncio.TimeoutError:
        return "timeout"
    except (httpx.HTTPError, OSError, RuntimeError, ValueError, TypeError):
        return "error"


async def _discard(client: httpx.AsyncClient, request: httpx.Request) -> int:
    response = await client.send(request, stream=True)
    try:
        async for _ in response.aiter_raw():
            pass
    finally:
        await response.aclose()
    return response.status_code


# ---------------------------------------------------------------------------------------------- the cloud


class ShadowMirror:
    """One API's copies, in the cloud: a request it answers on a splitter's path (MYELIN_ENDPOINT_ALIASES) whose
    splitter has a shadow (MYELIN_SHADOW_TARGETS) is copied to that shadow's URL once its own answer is written.

    One HTTP client per process (connections reused, at most SHADOW_MAX_IN_FLIGHT per splitter), made on the first
    copy and closed with the server. The copy carries the request's method, query string and headers (but for
    hop-by-hop ones, its framing and its Host: the API keys go too, checked by the shadow against its own keys, as
    `myelin local` does) and the same X-Request-ID as the client's answer."""

    def __init__(self, api: str, targets: tuple[ShadowTarget, ...], max_body: int, timeout: float,
                 counters: tuple[Counter, Counter]):
        self.targets = {t.splitter: t for t in targets}
        #: The shadow's limits where the cluster did not pass them: the API's own.
        self.max_body = {t.splitter: t.max_body or max_body for t in targets}
        self.timeout = {t.splitter: (t.timeout or timeout) + SHADOW_GRACE_S for t in targets}
        self.slots = {t.splitter: ShadowSlots(t.splitter, t.shadow, *counters) for t in targets}
        self.client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task] = set()

    async def predict(self, splitter: str, handle: Callable[..., Awaitable[None]], runtime: Any, scope: dict,
                      receive: Any, send: Any) -> None:
        """`handle` (the predict path) answers the request as it would without a shadow, its body read through a
        tee; then, if the body was read whole, the copy goes out in the background."""
        slots = self.slots[splitter]
        headers = scope["headers"]
        if not slots.take(declared_length(headers), self.max_body[splitter]):
            await handle(runtime, scope, receive, send)
            return
        # The request id is decided here, so the API's answer and the shadow's log carry the same one.
        rid = next((v[:MAX_REQUEST_ID] for k, v in headers if k == b"x-request-id" and v), None)
        if rid is None:
            rid = new_request_id().encode()
            scope = {**scope, "headers": [*headers, (b"x-request-id", rid)]}
        copy = BodyCopy(slots, self.max_body[splitter], body=b"" if has_no_body(headers) else None)
        try:
            await handle(runtime, scope, copy.receive_from(receive), send)
        finally:
            body = copy.take_body()
            if body is None:
                copy.give_up(DROP_NOT_READ)  # refused before its body was read (401, 413, 503), or the client left
            else:
                self._spawn(self._copy(splitter, scope, body, copy.size))

    def describe(self) -> dict[str, Any]:
        return {s: slots.describe() for s, slots in self.slots.items()}

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _client(self) -> httpx.AsyncClient:
        if self.client is None:
            bound = SHADOW_MAX_IN_FLIGHT * len(self.targets)
            # No proxies from the environment: the shadow is a Service inside the cluster.
            self.client = httpx.AsyncClient(timeout=None, trust_env=False, limits=httpx.Limits(
                max_connections=bound, max_keepalive_connections=bound))
        return self.client

    async def _copy(self, splitter: str, scope: dict, body: bytes, reserved: int) -> None:
        def request() -> httpx.Request:
            headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _COPY_DROP]
            url = httpx.URL(self.targets[splitter].url, query=scope.get("query_string", b""))
            return httpx.Request(scope["method"], url, headers=headers, content=body)

        status = "error"
        try:
            status = await deliver(self._client(), request, self.timeout[splitter])
        finally:
            self.slots[splitter].done(status, reserved)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.client is not None:
            await self.client.aclose()
            self.client = None
