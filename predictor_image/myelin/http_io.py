"""Reading requests and writing responses over raw ASGI: the pieces every front door shares.

API-key checks, the contract's JSON error responses, request ids, whole responses (`send_body`),
and a `ResponseWriter` that remembers whether the response has started (after that an error can
only end the stream, never replace the status line). Bodies are read through the request's ticket
(`lifecycle.Ticket.read_body`: bounded per request and per process).
"""

from __future__ import annotations

import hmac
import itertools
import os
import re
from typing import Awaitable, Callable

from .errors import HTTPError, error_body
from .wire import respond

Send = Callable[[dict], Awaitable[None]]
Receive = Callable[[], Awaitable[dict]]

MAX_REQUEST_ID = 128
#: A response body larger than this (the connection's high-water mark: above it uvicorn pauses the writer)
#: is sent in two steps, and `send_body` returns only once the connection has taken it, or was aborted by
#: the write deadline: the request's ticket (lifecycle.py) is held until then.
FLUSH_ABOVE = 64 * 1024

_ids = itertools.count(1)
_ID_PREFIX = os.urandom(4).hex()


def new_request_id() -> str:
    return f"{_ID_PREFIX}-{next(_ids):x}"


class ClientGone(Exception):
    """The client disconnected (or its body stalled) before the request was read."""


#: A request id a client may choose (X-Request-Id): visible ASCII, no spaces; anything else gets a new id, so an
#: id is always safe to echo in a header and a log line.
_CLIENT_ID = re.compile(rb"[\x21-\x7e]+").fullmatch


def accepted_request_id(value: bytes) -> bool:
    """Whether `RequestHead` takes this X-Request-Id value as the request's id (else it makes one up)."""
    return _CLIENT_ID(value[:MAX_REQUEST_ID]) is not None


class RequestHead:
    """What the predict path needs from the request headers, found in one pass."""

    __slots__ = ("content_type", "content_length", "request_id", "api_key", "authorization")

    def __init__(self, headers: list[tuple[bytes, bytes]], auth_header: bytes = b""):
        self.content_type = b""
        self.content_length = -1
        self.request_id = ""
        self.api_key = b""
        self.authorization = b""
        for key, value in headers:
            if key == b"content-type":
                self.content_type = value
            elif key == b"content-length":
                try:
                    self.content_length = int(value)
                except ValueError:
                    self.content_length = -1
            elif key == b"x-request-id":
                value = value[:MAX_REQUEST_ID]
                if _CLIENT_ID(value):
                    self.request_id = value.decode("ascii")
            elif key == auth_header:
                self.api_key = value
            elif key == b"authorization":
                self.authorization = value
        if not self.request_id:
            self.request_id = new_request_id()


class ApiKeys:
    """Accepted API keys, checked in constant time against every key."""

    def __init__(self, keys: list[str], header: str):
        self.keys = [k.encode() for k in keys]
        self.header = header.encode()

    def check(self, head: RequestHead) -> None:
        presented = head.api_key or head.authorization
        if presented[:7].lower() == b"bearer ":  # `Authorization: Bearer <key>`, or a custom header holding the same
            presented = presented[7:].strip()
        ok = False
        for key in self.keys:  # compare against every key, so timing reveals nothing about which matched
            ok |= hmac.compare_digest(presented, key)
        if not ok:
            raise HTTPError(401, "unauthorized", "missing or invalid API key", [(b"www-authenticate", b"ApiKey")])


def has_header(headers: list[tuple[bytes, bytes]], name: bytes) -> bool:
    """Whether the raw ASGI headers hold `name` (lower case), in any case."""
    return any(k.lower() == name for k, _ in headers)


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The request's Content-Length; None when absent or not a number."""
    for key, value in headers:
        if key.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def too_large(limit: int) -> HTTPError:
    return HTTPError(413, "payload_too_large", f"request body exceeds the {limit} byte limit (serving.max_body_size)",
                     [(b"connection", b"close")])


async def send_error(send: Send, status: int, error_type: str, message: str, request_id: str,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """The contract's JSON error: `{"error": {"type", "message", "request_id"}}`."""
    body = error_body(error_type, message, request_id)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode("latin-1")), *(headers or []),
    ]})
    await send({"type": "http.response.body", "body": body})


async def send_body(send: Send, status: int, body: bytes, content_type: bytes, request_id: str,
                    close: bool = False, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """One whole response. `close` (the replica is draining) tells the client not to reuse the connection:
    its next request opens a new one, which the load balancer sends to another replica.

    Above `FLUSH_ABOVE` bytes, returns once the connection has taken all but its low-water mark of the
    body (uvicorn waits for a paused writer before the next message), or was closed."""
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
               (b"x-request-id", request_id.encode("latin-1"))]
    if close:
        headers.append((b"connection", b"close"))
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if len(body) > FLUSH_ABOVE:
        await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    else:
        await send({"type": "http.response.body", "body": body})


def respond_whole(send: Send, status: int, body: bytes, content_type: bytes, request_id: str,
                  close: bool = False) -> bool:
    """`send_body`'s response in one write, without the ASGI messages, when the connection allows it (`wire.respond`:
    False, nothing sent, when it does not, or when the body is over `FLUSH_ABOVE`: then `await send_body(...)`)."""
    if len(body) > FLUSH_ABOVE:
        return False
    head = (b"content-type: " + content_type + b"\r\ncontent-length: " + str(len(body)).encode()
            + b"\r\nx-request-id: " + request_id.encode("latin-1")
            + (b"\r\nconnection: close\r\n" if close else b"\r\n"))
    return respond(send, status, head, body, close)


class ResponseWriter:
    """Wraps `send`, remembering whether the response has started and its status."""

    __slots__ = ("_send", "started", "status")

    def __init__(self, send: Send):
        self._send = send
        self.started = False
        self.status = 0

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            self.status = message["status"]
        await self._send(message)
