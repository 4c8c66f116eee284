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
from urllib.parse import urlsplit

import httpx
from prometheus_client import Counter

from . import contract as c
from .http_io import accepted_request_id, declared_length, has_header, new_request_id
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


#: What a failed copy can raise: the connection (refused, reset, closed early), the answer (not HTTP, a head
#: beyond the reader's limit), a request httpx cannot send again (myelin local).
_COPY_ERRORS = (httpx.HTTPError, OSError, EOFError, asyncio.LimitOverrunError, RuntimeError, ValueError, TypeError)


async def deliver(exchange: Callable[[], Awaitable[int]], timeout: float) -> str:
    """Run one copy's exchange (send it, read its answer to the end without keeping it, return the status): the
    shadow's status, `timeout` or `error`. Never raises (but for cancellation): whatever happens here is the
    shadow's, not the client's."""
    try:
        return str(await asyncio.wait_for(exchange(), timeout))
    except asyncio.TimeoutError:
        return "timeout"
    except _COPY_ERRORS:
        return "error"


async def discard(client: httpx.AsyncClient, request: httpx.Request) -> int:
    """myelin local's exchange, on the router's client to the shadow's process."""
    response = await client.send(request, stream=True)
    try:
        async for _ in response.aiter_raw():
            pass
    finally:
        await response.aclose()
    return response.status_code


class CopyConnections:
    """The cloud's exchange: a minimal HTTP/1.1 client to one shadow URL, its idle connections kept for reuse (at
    most `keep`). A copy needs to send a request and find where its answer ends, nothing else, and it runs in the
    process that answers clients: a general client (httpx) spent about 1 ms of CPU per copy, four times the
    predict path's own request on a small payload (docs/traffic-splitting.md). An answer it cannot frame (no
    length, a head over 64 KiB, not HTTP/1.x) ends its connection; a reused connection the shadow had closed is
    replaced once by a new one."""

    _READ = 64 * 1024  # an answer's body is read and dropped in pieces of at most this

    def __init__(self, url: str, keep: int):
        parts = urlsplit(url)
        self.host = parts.hostname or ""
        self.port = parts.port or 80
        self.path = parts.path.encode("ascii")
        self.host_header = parts.netloc.encode("ascii")
        self.keep = keep
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    def request_head(self, method: str, query: bytes, headers: list[tuple[bytes, bytes]], size: int) -> bytes:
        target = self.path + (b"?" + query if query else b"")
        lines = [b"%s %s HTTP/1.1" % (method.encode("ascii"), target), b"host: " + self.host_header,
                 b"content-length: %d" % size, *(k + b": " + v for k, v in headers)]
        return b"\r\n".join(lines) + b"\r\n\r\n"

    async def exchange(self, head: bytes, body: bytes) -> int:
        while self.idle:
            conn = self.idle.pop()
            if conn[0].at_eof():  # closed by the shadow while idle
                conn[1].close()
                continue
            try:
                return await self._on(conn, head, body)
            except (OSError, EOFError) as err:
                if isinstance(err, asyncio.IncompleteReadError) and err.partial:
                    raise  # the shadow had begun to answer: not a stale connection
                break  # closed by the shadow as this copy was sent: once more, on a new connection
        return await self._on(await asyncio.open_connection(self.host, self.port), head, body)

    async def _on(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], head: bytes, body: bytes) -> int:
        reader, writer = conn
        try:
            writer.write(head + body if len(body) < self._READ else head)
            if len(body) >= self._READ:
                writer.write(body)
            await writer.drain()
            status, reusable = await _read_answer(reader)
        except BaseException:  # failed, timed out or cancelled: the connection's state is unknown
            writer.close()
            raise
        if reusable and len(self.idle) < self.keep:
            self.idle.append(conn)
        else:
            writer.close()
        return status

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP/1.x answer to its end, dropping its body: (status, whether the connection can be reused)."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head[:-4].split(b"\r\n")
        version, _, rest = status_line.partition(b" ")
        if version not in (b"HTTP/1.1", b"HTTP/1.0"):
            raise ValueError(f"not an HTTP/1.x answer: {status_line[:80]!r}")
        status = int(rest[:3])
        if status >= 200:
            break  # 1xx (informational) answers come before the real one
    fields: dict[bytes, bytes] = {}
    for line in lines:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip().lower()
    reusable = (b"close" not in fields.get(b"connection", b"") if version == b"HTTP/1.1"
                else b"keep-alive" in fields.get(b"connection", b""))
    if status in (204, 304):
        return status, reusable
    if b"chunked" in fields.get(b"transfer-encoding", b""):
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size < 0:
                raise ValueError(f"negative chunk size: {size}")
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the empty line
                    pass
                return status, reusable
            await _skip(reader, size + 2)
    length = fields.get(b"content-length")
    if length is None:  # the body runs to the end of the connection
        while await reader.read(CopyConnections._READ):
            pass
        return status, False
    size = int(length)
    if size < 0:
        raise ValueError(f"negative Content-Length: {size}")
    await _skip(reader, size)
    return status, reusable


async def _skip(reader: asyncio.StreamReader, size: int) -> None:
    while size > 0:
        size -= len(await reader.readexactly(min(size, CopyConnections._READ)))


# ---------------------------------------------------------------------------------------------- the cloud


class ShadowMirror:
    """One API's copies, in the cloud: a request it answers on a splitter's path (MYELIN_ENDPOINT_ALIASES) whose
    splitter has a shadow (MYELIN_SHADOW_TARGETS) is copied to that shadow's URL once its own answer is written.

    One pool of connections per shadow and process (`CopyConnections`: reused; as many open as copies in flight,
    at most SHADOW_MAX_IN_FLIGHT per splitter), closed with the server. The copy carries the request's method,
    query string and headers (but for hop-by-hop ones, its framing and its Host: the API keys go too, checked by
    the shadow against its own keys, as `myelin local` does) and the same X-Request-ID as the client's answer."""

    def __init__(self, api: str, targets: tuple[ShadowTarget, ...], max_body: int, timeout: float,
                 counters: tuple[Counter, Counter]):
        self.targets = {t.splitter: t for t in targets}
        #: The shadow's limits where the cluster did not pass them: the API's own.
        self.max_body = {t.splitter: t.max_body or max_body for t in targets}
        self.timeout = {t.splitter: (t.timeout or timeout) + SHADOW_GRACE_S for t in targets}
        self.slots = {t.splitter: ShadowSlots(t.splitter, t.shadow, *counters) for t in targets}
        #: One pool of connections per shadow URL (this process's "client"), as many idle as copies may be in flight.
        self.connections = {t.splitter: CopyConnections(t.url, SHADOW_MAX_IN_FLIGHT) for t in targets}
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
        # The request id is decided here, so the API's answer and the shadow's log carry the same one: a client's id
        # the API would not take (not visible ASCII, empty) is followed by a new one, which both take (the last
        # accepted one wins).
        if not any(k == b"x-request-id" and accepted_request_id(v) for k, v in headers):
            scope = {**scope, "headers": [*headers, (b"x-request-id", new_request_id().encode())]}
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

    async def _copy(self, splitter: str, scope: dict, body: bytes, reserved: int) -> None:
        connections = self.connections[splitter]
        status = "error"
        try:
            headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _COPY_DROP]
            head = connections.request_head(scope["method"], scope.get("query_string", b""), headers, len(body))
            status = await deliver(lambda: connections.exchange(head, body), self.timeout[splitter])
        finally:
            self.slots[splitter].done(status, reserved)

    def close(self) -> None:
        """Copies in flight are cancelled (counted as `error`), idle connections closed."""
        for task in list(self._tasks):
            task.cancel()
        for connections in self.connections.values():
            connections.close()
