"""Unit tests of myelin/lifecycle.py: one ticket per request, released once, stuck accounting by scan.

The servers' behaviour (every kind of call through the lifecycle) is tested end to end in tests/adversarial.
"""

from __future__ import annotations

import asyncio

import pytest

from myelin.errors import HTTPError
from myelin.lifecycle import BodyBudget, Lifecycle


class FakeLoop:
    def __init__(self, now: float = 100.0):
        self.now = now

    def time(self) -> float:
        return self.now


def lifecycle(capacity: int = 4, call_capacity: int = 2, budget: int = 1000) -> Lifecycle:
    lc = Lifecycle(capacity, BodyBudget(budget))
    lc.call_capacity = call_capacity
    lc.loop = FakeLoop()
    return lc


def test_a_ticket_is_released_once_when_both_the_write_and_the_call_are_over():
    lc = lifecycle()
    write_first = lc.admit(0, 110.0)
    call_first = lc.admit(0, 110.0)
    never_called = lc.admit(0, 110.0)
    for t in (write_first, call_first):
        t.begin_call()
    write_first.finish()
    call_first.returned()
    assert lc.in_flight == 3 and lc.admitted == 3
    write_first.returned()
    call_first.finish()
    never_called.finish()
    write_first.finish()
    call_first.returned()  # repeated: nothing more
    assert lc.in_flight == 0 and lc.admitted == 0


def test_admission_is_refused_past_capacity_and_ungated_tickets_do_not_count():
    lc = lifecycle(capacity=2)
    lc.enter(110.0)  # a job or a status read
    lc.admit(0, 110.0)
    lc.admit(-1, 110.0)
    with pytest.raises(HTTPError) as refused:
        lc.admit(5, 110.0)
    assert refused.value.status_code == 503 and (b"connection", b"close") in refused.value.headers
    with pytest.raises(HTTPError) as refused_no_body:
        lc.admit(0, 110.0)
    assert (b"connection", b"close") not in refused_no_body.value.headers
    assert lc.in_flight == 3


def test_a_declared_body_is_reserved_at_admission_and_given_back():
    lc = lifecycle(budget=1000)
    big = lc.admit(800, 110.0)
    with pytest.raises(HTTPError) as refused:
        lc.admit(300, 110.0)
    assert "MYELIN_MAX_BODY_BYTES_IN_FLIGHT" in refused.value.message
    assert lc.in_flight == 1 and lc.budget.used == 800
    big.finish()  # e.g. the client left before sending its body
    assert lc.budget.used == 0
    lc.admit(300, 110.0)


def test_a_chunked_body_reserves_as_it_arrives_and_is_refused_past_the_budget():
    lc = lifecycle(budget=1000)
    ticket = lc.admit(-1, 110.0)
    chunks = iter([{"type": "http.request", "body": b"x" * 600, "more_body": True},
                   {"type": "http.request", "body": b"x" * 600, "more_body": True},
                   {"type": "http.request", "body": b"x" * 600, "more_body": False}])

    async def receive():
        return next(chunks)

    with pytest.raises(HTTPError) as refused:
        asyncio.run(ticket.read_body(receive, 10_000))
    assert refused.value.status_code == 503 and lc.budget.used == 0


def test_stuck_calls_wedge_the_api_once_they_fill_its_call_slots():
    lc = lifecycle(call_capacity=2)
    a, b, c = (lc.admit(0, deadline) for deadline in (101.0, 102.0, 150.0))
    for t in (a, b, c):
        t.begin_call()
    lc.loop.now = 101.5
    assert not lc.wedged() and lc.stuck == 1
    lc.loop.now = 103.0
    assert lc.wedged() and lc.stuck == 2
    assert lc.stuck_for() == pytest.approx(1.0)  # wedged since b's deadline
    b.returned()
    assert not lc.wedged() and lc.stuck == 1


def test_a_batch_is_a_stuck_call_only_once_every_request_in_it_is_late():
    lc = lifecycle(call_capacity=1)
    early, late = lc.admit(0, 101.0), lc.admit(0, 105.0)
    batch = [early, late]
    for t in batch:
        t.begin_call(batch)
    lc.loop.now = 102.0
    assert not lc.wedged() and lc.stuck == 1  # one request late, the batch still serves the other
    lc.loop.now = 106.0
    assert lc.wedged() and lc.stuck == 2
    assert lc.wedged_since == 105.0
    for t in batch:
        t.returned()
        t.finish()
    assert not lc.wedged() and lc.in_flight == 0


def test_idle_waits_for_every_ticket():
    async def scenario() -> tuple[bool, bool]:
        lc = Lifecycle(4, None)
        ticket = lc.enter(0.0)
        ticket.begin_call()
        ticket.finish()
        busy = await lc.idle(0.05)
        asyncio.get_running_loop().call_later(0.01, ticket.returned)
        return busy, await lc.idle(1.0)

    assert asyncio.run(scenario()) == (False, True)
