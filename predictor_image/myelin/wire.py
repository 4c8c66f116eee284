"""The response's bytes on the wire: one write per response, and no timer per keep-alive request.

uvicorn's httptools cycle writes a response in (at least) two `transport.write` calls: the status
line and headers when the app sends `http.response.start`, then the body. On a socket that is
writable each write is its own `send(2)`, and on loopback or a node-local hop each send also does
the receiving side's TCP work: two syscalls per answer where one will do. `Cycle` holds the head
of a response whose length is known (`Content-Length`, not a HEAD request, not 204/304) until its
first body message, and writes both together. A response without a length (a stream, chunked) has
its head written at once, as before, so a stream's first item is never held back.

The header checks are uvicorn's (the same two character classes, refused with the same errors),
run once over all names and once over all values instead of once per header.

`Cycle` replaces uvicorn's `RequestResponseCycle` in `protection.ProtectedHttpToolsProtocol`
(`adopt`, right after uvicorn creates one per request); everything else about the cycle (receive,
disconnects, flow control, pipelining, the 500 for an app that fails before answering) is
uvicorn's. tests/runtime/test_wire.py pins the behaviour, including what uvicorn 0.54.0 does for
the cases the fast path hands back to it.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE, STATUS_LINE, RequestResponseCycle

#: A body at most this long is joined to its head in one bytes object; a longer one is handed to the transport
#: as two buffers of one `writelines` (one `writev`, no copy of the body).
JOIN_BELOW = 16 * 1024
_NO_BODY_STATUS = (204, 304)


class Cycle(RequestResponseCycle):
    """uvicorn's request/response cycle, writing a response of known length in one write (module docstring)."""

    #: The status line and headers of a started response, not written yet: they go out with the first body.
    _head: bytes | None = None

    async def send(self, message: Any) -> None:
        head = self._head
        if head is not None:
            self._head = None
            await self._send_with_head(head, message)
            return
        if (message["type"] == "http.response.start" and not self.response_started and not self.access_log
                and not self.disconnected and not self.flow.write_paused):
            self._start(message)
            return
        await super().send(message)  # the body of a response whose head is out; errors; an access-logged server

    def _start(self, message: Any) -> None:
        """`http.response.start`: the head built as uvicorn builds it; held when a body of known length follows."""
        self.response_started = True
        self.waiting_for_100_continue = False
        status = message["status"]
        headers = [*self.default_headers, *message.get("headers", ())]
        names = []
        values = []
        content = [STATUS_LINE[status]]
        closing = False
        for name, value in headers:
            names.append(name)
            values.append(value)
            name = name.lower()
            if name == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif name == b"connection":
                if b"close" in [token.lower().strip() for token in value.split(b",")]:
                    self.keep_alive = False
                    closing = True
            content += (name, b": ", value, b"\r\n")
        # The character classes match single bytes, so one search over the joined names (values) refuses exactly
        # what one search per name (value) would.
        if HEADER_RE.search(b"".join(names)):
            raise RuntimeError("Invalid HTTP header name.")
        if HEADER_VALUE_RE.search(b"".join(values)):
            raise RuntimeError("Invalid HTTP header value.")
        if not self.keep_alive and not closing:
            content.append(b"connection: close\r\n")
        no_body = self.scope["method"] == "HEAD" or status in _NO_BODY_STATUS
        if self.chunked_encoding is None and not no_body:
            self.chunked_encoding = True
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        if self.chunked_encoding is False and not no_body:
            self._head = b"".join(content)  # the body follows: one write for both
        else:
            self.transport.write(b"".join(content))

    async def _send_with_head(self, head: bytes, message: Any) -> None:
        """The first message after a held head: a body goes out in the same write; anything else goes to
        uvicorn after the head is written (it raises for what an ASGI app may not send here)."""
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if message["type"] != "http.response.body":
            self.transport.write(head)
            await super().send(message)
            return
        body = message.get("body", b"")
        more_body = message.get("more_body", False)
        size = len(body)
        if size > self.expected_content_length:
            self.transport.write(head)
            raise RuntimeError("Response content longer than Content-Length")
        self.expected_content_length -= size
        if not size:
            self.transport.write(head)
        elif size < JOIN_BELOW:
            self.transport.write(head + body)
        else:
            self.transport.writelines((head, body))
        if not more_body:
            if self.expected_content_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()


def respond(send: Any, status: int, head: bytes, body: bytes, close: bool = False) -> bool:
    """Write a whole response the server built itself in one write, without the ASGI messages: the status line,
    the server's default headers, `head` (header lines, each ending in CRLF, Content-Length among them: the
    caller builds them from values it has checked), the body. `close`: the head says `connection: close`.

    False, with nothing written, when `send` is not a `Cycle`'s (another ASGI server, a wrapped send) or the
    response must go through `send` (already started, the writer paused for flow control, a HEAD request, an
    access-logged server): the caller sends the same response as ASGI messages.
    """
    cycle = getattr(send, "__self__", None)
    if type(cycle) is not Cycle:
        return False
    if (cycle.response_started or cycle.disconnected or cycle.flow.write_paused or cycle.access_log
            or cycle.scope["method"] == "HEAD"):
        return False
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    parts = [STATUS_LINE[status]]
    for name, value in cycle.default_headers:  # uvicorn's (the date), checked by uvicorn's own code
        parts += (name, b": ", value, b"\r\n")
    parts.append(head)
    if close:
        cycle.keep_alive = False
    elif not cycle.keep_alive:  # an HTTP/1.0 client, or one that asked to close
        parts.append(b"connection: close\r\n")
    parts += (b"\r\n", body)
    transport = cycle.transport
    transport.write(b"".join(parts))
    cycle.response_complete = True
    cycle.message_event.set()
    if not cycle.keep_alive:
        transport.close()
    cycle.on_response()
    return True


def adopt(cycle: Any) -> None:
    """Make uvicorn's new cycle a `Cycle` (same state, same methods but `send`), before its app runs."""
    if type(cycle) is RequestResponseCycle:
        cycle.__class__ = Cycle
