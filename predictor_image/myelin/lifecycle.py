"""One request lifecycle for every kind of call: admission -> body -> call -> write -> release.

Every request, and every AsyncAPI job, holds one `Ticket` from the moment it is admitted until both
of these are true, whichever comes last:

- its response is written: the last byte handed to the connection, or the write failed, or the
  connection was aborted (`Ticket.finish`, called once by the front door when it is done);
- its call really returned: a sync `predict`, a streamed generator's step or a batch running in a
  thread cannot be interrupted, so a call past its deadline keeps its ticket until it returns
  (`Ticket.returned`, called by the invocation core when the call is over).

What the ticket drives, written once here for plain, batched, streamed and async-job calls:

- admission before the body is read (`Lifecycle.admit`): at most `max_concurrency +
  max_queue_length` admitted requests per process, and the bytes of request bodies being received
  at once are bounded per process (`BodyBudget`, MYELIN_MAX_BODY_BYTES_IN_FLIGHT); beyond either,
  503 with Retry-After, before a byte of the body is read;
- the in-flight count (`myelin_in_flight_requests`, the autoscaling signal, what drains and reloads
  wait for): live tickets;
- stuck accounting: a ticket whose call is still running past its deadline is stuck
  (`myelin_stuck_predictions`); once every call slot is held by stuck calls the API is wedged
  (`wedged_since`: `/readyz` says "stuck", `/healthz` fails after `serving.stuck_timeout`, a worker of
  a multi-process replica exits). A streamed call's deadline is that of the step under way.

Stuck calls are found by scanning the live tickets when a probe or the metrics sampler asks
(`Lifecycle.scan`), so the hot path only sets two attributes per call.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from .errors import HTTPError, overloaded
from .http_io import ClientGone, too_large

class BodyBudget:
    """Bytes of request bodies being received at once in this process (MYELIN_MAX_BODY_BYTES_IN_FLIGHT)."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


def _refused(message: str, body_pending: bool) -> HTTPError:
    err = overloaded(message)
    if body_pending:  # the body is not read: the connection cannot carry another request
        err.headers.append((b"connection", b"close"))
    return err


def body_budget_full(limit: int) -> HTTPError:
    return _refused(f"server is receiving its limit of request bodies ({limit} bytes at once, "
                    "MYELIN_MAX_BODY_BYTES_IN_FLIGHT); retry later", True)


class Ticket:
    """One request (or job) from admission to release; see the module docstring."""

    __slots__ = ("_lifecycle", "deadline", "calling", "call", "answered", "reserved", "gated")

    def __init__(self, lifecycle: "Lifecycle", deadline: float, reserved: int, gated: bool):
        self._lifecycle = lifecycle
        #: Event-loop time by which the call (or, streaming, the step under way) must be done.
        self.deadline = deadline
        #: The call is running: a predict, a batch holding this request, or a stream's open generator.
        self.calling = False
        #: What this ticket's call is shared with (a batch); None: a call of its own.
        self.call: Any = None
        self.answered = False
        #: Body bytes reserved from the process's budget while the body is received.
        self.reserved = reserved
        self.gated = gated

    # ------------------------------------------------------------------ body
    async def read_body(self, receive: Callable[[], Awaitable[dict]], limit: int) -> bytes:
        """The whole body (413 past `limit`), its bytes counted against the process's body budget meanwhile.

        A declared Content-Length was reserved at admission; a body without one (chunked) reserves as its
        chunks arrive and is refused (503, connection closed) once the budget cannot take the next one.
        """
        budget = None if self.reserved else self._lifecycle.budget  # None: nothing more to reserve
        try:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            body = message.get("body", b"")
            if not message.get("more_body", False):  # the whole body in one message: the common case
                if len(body) > limit:
                    raise too_large(limit)
                return body
            chunks = [body]
            size = len(body)
            while True:
                if budget is not None and size > self.reserved:
                    if not budget.take(size - self.reserved):
                        raise body_budget_full(budget.limit)
                    self.reserved = size
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:  # stop reading: never hold more than the limit in memory
                    raise too_large(limit)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
        finally:
            if self.reserved:
                self._lifecycle.budget.used -= self.reserved
                self.reserved = 0

    def _give_back(self) -> None:
        if self.reserved:
            self._lifecycle.budget.give(self.reserved)
            self.reserved = 0

    # ------------------------------------------------------------------ call
    def begin_call(self, call: Any = None) -> None:
        """The call runs from here (a predict, the batch `call` holding this request, a stream's generator)."""
        self.calling = True
        self.call = call

    def returned(self) -> None:
        """The call really returned (a thread that ran past the deadline included): its slot is free."""
        if not self.calling:
            return
        self.calling = False
        self.call = None
        if self.answered:
            self._lifecycle._release(self)

    # ------------------------------------------------------------------ write, release
    def finish(self) -> None:
        """The front door is done: the response was written, or could not be (client gone, aborted)."""
        if self.answered:
            return
        self.answered = True
        if self.reserved:
            self._give_back()
        if not self.calling:
            self._lifecycle._release(self)


class Lifecycle:
    """One API's tickets in one process: admission, in-flight count, stuck accounting, idle wait."""

    def __init__(self, capacity: int, budget: BodyBudget | None = None):
        #: Admitted requests at once: max_concurrency + max_queue_length of this process.
        self.capacity = capacity
        self.budget = budget
        #: Calls that can run at once (the invoker's; set once the predictor is loaded).
        self.call_capacity = 0
        self.admitted = 0
        self.tickets: set[Ticket] = set()
        #: Loop time at which every call slot became held by a stuck call; None while the API can serve.
        self.wedged_since: float | None = None
        self.stuck = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return len(self.tickets)

    # ------------------------------------------------------------------ tickets
    def admit(self, content_length: int, deadline: float) -> Ticket:
        """A ticket for an HTTP request whose body is not read yet; 503 (Retry-After) when none is free.

        `content_length` is the declared length (-1 when chunked or absent): reserved from the body
        budget now, so a body that cannot fit is refused before it is read.
        """
        if self.admitted >= self.capacity:
            raise _refused("server is at capacity, retry later", content_length != 0)
        reserved = 0
        budget = self.budget
        if content_length > 0 and budget is not None:
            if budget.used + content_length > budget.limit:
                raise body_budget_full(budget.limit)
            budget.used += content_length
            reserved = content_length
        self.admitted += 1
        ticket = Ticket(self, deadline, reserved, True)
        tickets = self.tickets
        if not tickets:
            self._idle.clear()
        tickets.add(ticket)
        return ticket

    def enter(self, deadline: float) -> Ticket:
        """A ticket outside admission: an AsyncAPI job (the worker claims only free slots) or a status read."""
        return self._add(Ticket(self, deadline, 0, False))

    def _add(self, ticket: Ticket) -> Ticket:
        tickets = self.tickets
        if not tickets:
            self._idle.clear()
        tickets.add(ticket)
        return ticket

    def _release(self, ticket: Ticket) -> None:
        tickets = self.tickets
        tickets.discard(ticket)
        if ticket.gated:
            self.admitted -= 1
        if not tickets:
            self._idle.set()

    async def idle(self, timeout: float) -> bool:
        """Wait until no ticket is held (True), or `timeout` seconds pass (False)."""
        if not self.tickets:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    # ------------------------------------------------------------------ stuck calls
    def scan(self) -> None:
        """Recount stuck requests and calls; update `wedged_since`.

        A request is stuck when its call is still running past its deadline. A call is stuck when every
        request in it is (a batch holds several). The API is wedged once stuck calls fill `call_capacity`;
        it became wedged when the call that completed that set became stuck.
        """
        loop = self.loop
        if loop is None:
            return
        now = loop.time()
        stuck = 0
        own: list[float] = []  # stuck-since of calls of one request
        shared: dict[int, list[float]] = {}  # batch -> [all late (1.0/0.0), latest deadline]
        for ticket in self.tickets:
            if not ticket.calling:
                continue
            late = ticket.deadline <= now
            stuck += late
            if ticket.call is None:
                if late:
                    own.append(ticket.deadline)
                continue
            entry = shared.setdefault(id(ticket.call), [1.0, 0.0])
            if not late:
                entry[0] = 0.0
            entry[1] = max(entry[1], ticket.deadline)
        since = own + [deadline for all_late, deadline in shared.values() if all_late]
        self.stuck = stuck
        capacity = self.call_capacity
        if capacity <= 0 or len(since) < capacity:
            self.wedged_since = None
        elif self.wedged_since is None:
            since.sort()
            self.wedged_since = since[capacity - 1]

    def wedged(self) -> bool:
        self.scan()
        return self.wedged_since is not None

    def stuck_for(self) -> float:
        """Seconds every call slot has been held by stuck calls (0 when the API can serve)."""
        self.scan()
        since = self.wedged_since
        return self.loop.time() - since if since is not None else 0.0
