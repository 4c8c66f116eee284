"""Header and body read timeouts for uvicorn's httptools protocol.

uvicorn has a keep-alive timeout but no limit on how long a client may take to
send a request's headers or body, so a client that opens a connection, sends
half a request line and then nothing holds that connection (and its memory)
forever; a few thousand such clients exhaust the server (slowloris).

`ProtectedHttpToolsProtocol` arms a deadline when a connection opens and when
each new request begins: if the headers are not complete within
`Settings.header_timeout` seconds (MYELIN_HEADER_TIMEOUT, default 10) the
connection is closed (with a 408 JSON error if part of a request arrived).
Once the headers are in, the body must be complete within
`Settings.body_timeout` seconds (MYELIN_BODY_TIMEOUT, default 60), else 408
and close. Time during which the server itself stopped reading (flow
control, a pipelined request waiting its turn) does not count against the
client.

A request the HTTP parser refuses (conflicting or duplicate framing headers, control characters) gets the
contract's JSON 400 with a request id, sent after the answer to any earlier pipelined request on the
connection, then the connection is closed.

The same goes for the other direction. A client that stops reading leaves the
response's unsent bytes in the transport's buffer (a whole answer, however
large, is handed to the transport at once), and uvicorn's graceful close waits
for a flush that never comes: the memory is pinned for as long as the client
keeps the connection open. So while the transport has paused writing (its
buffer is over the high-water mark), a response that makes no progress (not
one byte of the buffer sent) for `Settings.write_timeout` seconds
(MYELIN_WRITE_TIMEOUT, default 30) has its connection aborted: the buffer is
dropped, the app sees a disconnect, and `myelin_write_timeouts_total` counts
it. A slow client that keeps reading makes progress and is never cut.
"""

from __future__ import annotations

import struct
from asyncio import TimerHandle
from typing import Any, Callable

try:  # the kernel's unsent bytes of a socket (Linux, macOS); without it, only the transport's buffer counts
    import fcntl
    from termios import TIOCOUTQ as _TIOCOUTQ
except ImportError:  # pragma: no cover - Windows
    _TIOCOUTQ = None

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .http_io import new_request_id
from .settings import Settings
from .wire import adopt


def _error_response(status: bytes, error_type: str, message: str) -> bytes:
    """A whole HTTP/1.1 error response (the contract's JSON body) that closes the connection."""
    request_id = new_request_id()
    body = orjson.dumps({"error": {"type": error_type, "message": message, "request_id": request_id}})
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\nx-request-id: " + request_id.encode() + b"\r\nconnection: close\r\n\r\n" + body)


def _answer_with(response: bytes) -> Callable[..., Any]:
    """An ASGI app that sends `response` (a whole HTTP/1.1 error response from _error_response) and closes."""
    head, body = response.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = [tuple(line.split(b": ", 1)) for line in lines[1:]]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def _timeout_response(what: str, seconds: float) -> bytes:
    return _error_response(b"408 Request Timeout", "request_timeout", f"request {what} not received within {seconds:g}s")


class ProtectedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol plus header- and body-read deadlines (see the module docstring).

    Use `protocol_for(settings)`: the settings are class attributes, read once, not per connection.
    """

    settings: Settings = Settings()
    #: Called with the request path each time a connection is aborted for its write deadline: the app's counter.
    on_write_timeout: Callable[[str], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = self.settings.header_timeout
        self.body_timeout = self.settings.body_timeout
        self.write_timeout = self.settings.write_timeout
        self._write_timer: TimerHandle | None = None
        self._unsent = 0  # the transport's unsent bytes at the last write-progress check
        self.max_header_bytes = self.settings.max_header_bytes
        self._in_headers = True
        self._header_bytes = 0
        self._refused = False
        self._deferred: bytes | None = None  # an error to send once the earlier request's answer is complete
        self._read_timer: TimerHandle | None = None
        self._deadline: float | None = None
        self._timer_at = 0.0  # when `_read_timer` fires
        self._what = ""
        self._limit = 0.0
        self._request_begun = False
        self._idle_deadline: float | None = None  # keep-alive: close the connection if no request begins by then
        self._idle_timer: TimerHandle | None = None

    # -------------------------------------------------------------- timers
    # Phase changes only move `_deadline` (a float); the one timer per connection is re-armed lazily
    # when it fires early. So a request on a busy keep-alive connection creates no timer at all.
    def _arm(self, seconds: float, what: str) -> None:
        deadline = self._deadline = self.loop.time() + seconds
        self._what = what
        self._limit = seconds
        timer = self._read_timer
        if timer is not None and self._timer_at > deadline:  # pending for a later deadline: too late
            timer.cancel()
            timer = None
        if timer is None:
            self._timer_at = deadline
            self._read_timer = self.loop.call_at(deadline, self._check_deadline)

    def _disarm(self) -> None:
        self._deadline = None

    def _check_deadline(self) -> None:
        self._read_timer = None
        if self._deadline is None:
            return
        if self.loop.time() < self._deadline:
            self._timer_at = self._deadline
            self._read_timer = self.loop.call_at(self._deadline, self._check_deadline)
            return
        self._read_timed_out(self._what, self._limit)

    def _read_timed_out(self, what: str, seconds: float) -> None:
        self._deadline = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.flow is not None and self.flow.read_paused:
            # The server is not reading (backpressure or a pipelined request): not the client's fault.
            self._arm(seconds, what)
            return
        cycle = self.cycle
        if what == "headers" and self._earlier_response_pending():
            # The stalled request's headers never completed: `cycle` is the previous request's, still being
            # answered. Its answer goes first; the 408 follows it, then the connection closes.
            self._defer(_timeout_response(what, seconds))
            return
        response_started = what == "body" and cycle is not None and cycle.response_started
        if self._request_begun and not response_started:
            if cycle is not None:
                cycle.scope["myelin.read_timeout"] = True  # so the app logs a 408, not a client disconnect
            transport.write(_timeout_response(what, seconds))
        transport.close()

    def _earlier_response_pending(self) -> bool:
        cycle = self.cycle
        return cycle is not None and not cycle.response_complete

    def _defer(self, response: bytes) -> None:
        """Stop reading; send `response` and close once the current answer is complete."""
        self._refused = True
        self._deferred = response
        if self.flow is not None:
            self.flow.pause_reading()

    def _refuse(self, response: bytes) -> None:
        self._refused = True
        self._disarm()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._earlier_response_pending():
            self._defer(response)
            return
        transport.write(response)
        transport.close()

    def send_400_response(self, msg: str) -> None:
        """A request the parser refuses (duplicate or conflicting Content-Length / Transfer-Encoding, a control
        character in a header...): the contract's JSON 400 with a request id instead of uvicorn's plain text, and
        after the answer to an earlier pipelined request on this connection, never in its place."""
        response = _error_response(b"400 Bad Request", "bad_request", "malformed HTTP request: " + msg.rstrip("."))
        cycle = self.cycle
        if self._in_headers or cycle is None:
            self._refuse(response)  # `cycle`, if any, is an earlier request's: its answer goes first
            return
        # The body of the request `cycle` is malformed (a bad chunk). It is this request that gets the 400.
        self._refused = True
        self._disarm()
        for i, (queued, _) in enumerate(self.pipeline):
            if queued is cycle:  # still waiting behind an earlier request: answered in its turn, then closed
                cycle.more_body = False
                self.pipeline[i] = (cycle, _answer_with(response))
                return
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not cycle.response_started:
            transport.write(response)
        transport.close()

    # -------------------------------------------------------------- protocol hooks
    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout, "headers")

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # an error is on its way; nothing more is read from this connection
        if self._in_headers:
            end = data.find(b"\r\n\r\n")
            self._header_bytes += len(data) if end < 0 else end + 4
            if self._header_bytes > self.max_header_bytes:
                self._refuse(_error_response(
                    b"431 Request Header Fields Too Large", "headers_too_large",
                    f"request line and headers exceed {self.max_header_bytes} bytes (MYELIN_MAX_HEADER_BYTES)"))
                return
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._idle_deadline = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._request_begun = True
        self._arm(self.header_timeout, "headers")

    def on_headers_complete(self) -> None:
        self._in_headers = False
        super().on_headers_complete()
        adopt(self.cycle)  # one write per response (wire.py)
        # The body deadline runs until on_message_complete (at once for a request without a body).
        self._arm(self.body_timeout, "body")

    def on_message_complete(self) -> None:
        self._disarm()
        self._request_begun = False
        self._in_headers = True  # the next request on this connection starts counting from zero
        self._header_bytes = 0
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # uvicorn's, except the keep-alive timeout: uvicorn starts a timer after every response and cancels it
        # when the next request's bytes arrive; here one timer per connection is re-armed only when it fires
        # before the idle deadline (`_idle_deadline`, moved per response).
        self.server_state.total_requests += 1
        transport = self.transport
        if not transport.is_closing():
            self.flow.resume_reading()
            if self.pipeline:  # the next pipelined request's turn
                cycle, app = self.pipeline.pop()
                self._start_asgi_task(cycle, app)
            else:
                self._idle_deadline = self.loop.time() + self.timeout_keep_alive
                if self._idle_timer is None:
                    self._idle_timer = self.loop.call_at(self._idle_deadline, self._check_idle)
        if self._deferred is not None and not self._earlier_response_pending():
            if not transport.is_closing():
                transport.write(self._deferred)
                transport.close()
            self._deferred = None
            return
        # Idle keep-alive connections are closed by the keep-alive deadline; a new request re-arms ours.
        if not self._request_begun:
            self._disarm()

    def _unset_keepalive_if_required(self) -> None:
        # Bytes arrived (or the connection is going): not idle. (uvicorn's keep-alive timer is never started here:
        # on_response_complete is this class's.)
        self._idle_deadline = None

    def _check_idle(self) -> None:
        self._idle_timer = None
        deadline = self._idle_deadline
        if deadline is None:
            return
        if self.loop.time() < deadline:
            self._idle_timer = self.loop.call_at(deadline, self._check_idle)
            return
        self._idle_deadline = None
        self.timeout_keep_alive_handler()

    # -------------------------------------------------------------- write deadline
    # Checked every write_timeout seconds while the transport is paused: progress is any byte that left the
    # buffer since the last check, so a slow client that keeps reading is never cut, however large the answer.
    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._unsent = self._unsent_bytes()
            self._write_timer = self.loop.call_later(self.write_timeout, self._check_write_progress)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _unsent_bytes(self) -> int:
        """Bytes not yet taken by the client: the transport's buffer plus the kernel's send queue. The kernel's
        part matters: a socket is reported writable again only once a good part of its queue has drained, so a
        slowly reading client can make progress for seconds without the transport's buffer moving."""
        unsent = self.transport.get_write_buffer_size()
        if _TIOCOUTQ is not None:
            sock = self.transport.get_extra_info("socket")
            try:
                unsent += struct.unpack("i", fcntl.ioctl(sock.fileno(), _TIOCOUTQ, b"\0\0\0\0"))[0]
            except (OSError, AttributeError, ValueError):
                pass
        return unsent

    def _check_write_progress(self) -> None:
        self._write_timer = None
        transport = self.transport
        if transport is None or self.flow is None or not self.flow.write_paused:
            return
        unsent = self._unsent_bytes()
        if unsent < self._unsent:  # the client read some: the deadline starts over
            self._unsent = unsent
            self._write_timer = self.loop.call_later(self.write_timeout, self._check_write_progress)
            return
        # abort(), not close(): close() would wait for the buffer to flush to a client that does not read.
        transport.abort()
        hook = self.on_write_timeout
        if hook is not None:
            cycle = self.cycle  # the response being written (or the last one, whose bytes are still buffered)
            hook(cycle.scope["path"] if cycle is not None else "")


def protocol_for(settings: Settings, on_write_timeout: Callable[[str], None] | None = None,
                 ) -> type[ProtectedHttpToolsProtocol]:
    """The protocol class uvicorn instantiates per connection, bound to these settings (and the app's counter of
    connections aborted for their write deadline)."""
    return type("ProtectedHttpToolsProtocol", (ProtectedHttpToolsProtocol,),
                {"settings": settings, "on_write_timeout": staticmethod(on_write_timeout) if on_write_timeout else None})
