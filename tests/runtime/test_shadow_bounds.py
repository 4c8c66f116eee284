"""The shadow's bookkeeping (myelin/shadow.py), shared by `myelin local` and the cloud: every slot and every byte a
copy holds is given back whichever way the copy ends, and each bound drops with its reason."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from myelin import shadow as sh


def slots() -> sh.ShadowSlots:
    return sh.ShadowSlots("split", "candidate", *sh.shadow_counters(CollectorRegistry()))


def receive_of(*messages: dict):
    queue = list(messages)

    async def receive() -> dict:
        return queue.pop(0)

    return receive


def chunk(data: bytes, more: bool = True) -> dict:
    return {"type": "http.request", "body": data, "more_body": more}


def read_all(copy: sh.BodyCopy, *messages: dict) -> None:
    tee = copy.receive_from(receive_of(*messages))

    async def main() -> None:
        for _ in messages:
            await tee()

    asyncio.run(main())


def test_a_complete_body_is_handed_over_with_its_bytes_reserved():
    s = slots()
    assert s.take(None, 100)
    copy = sh.BodyCopy(s, 100)
    read_all(copy, chunk(b"abc"), chunk(b"de", more=False))
    assert copy.take_body() == b"abcde" and copy.size == 5 and s.buffered == 5 and s.in_flight == 1
    s.done("200", copy.size)
    assert (s.buffered, s.in_flight, s.answered) == (0, 0, 1)
    copy.give_up(sh.DROP_NOT_READ)  # handed over already: nothing to give back twice
    assert (s.buffered, s.in_flight, s.dropped) == (0, 0, {})


@pytest.mark.parametrize("messages, limit, reason", [
    ([chunk(b"x" * 60), chunk(b"x" * 60, more=False)], 100, sh.DROP_TOO_LARGE),  # chunked: no declared length
    ([chunk(b"x" * 10), {"type": "http.disconnect"}], 100, sh.DROP_CLIENT_GONE),
    ([chunk(b"x" * 10)], 100, sh.DROP_NOT_READ),  # the API stopped reading (refused, failed)
])
def test_a_copy_given_up_gives_back_its_slot_and_bytes(messages, limit, reason):
    s = slots()
    assert s.take(None, limit)
    copy = sh.BodyCopy(s, limit)
    read_all(copy, *messages)
    copy.give_up(sh.DROP_NOT_READ)  # what the caller does after the API returns, if the body never completed
    assert copy.take_body() is None
    assert (s.buffered, s.in_flight, s.dropped) == (0, 0, {reason: 1})


def test_copied_bytes_beyond_the_bound_are_dropped_as_buffer_full(monkeypatch):
    monkeypatch.setattr(sh, "SHADOW_MAX_BUFFERED_BYTES", 100)
    s = slots()
    first, second = sh.BodyCopy(s, 1000), sh.BodyCopy(s, 1000)
    assert s.take(None, 1000) and s.take(None, 1000)
    read_all(first, chunk(b"x" * 80, more=False))  # complete, held until its copy is answered
    read_all(second, chunk(b"x" * 30, more=False))  # 80 + 30 > 100
    assert s.dropped == {sh.DROP_BUFFER: 1} and s.buffered == 80 and s.in_flight == 1
    s.done("timeout", first.size)
    assert (s.buffered, s.in_flight, s.failed) == (0, 0, 1)


def test_slots_beyond_the_cap_and_declared_bodies_too_large_are_refused_before_reading(monkeypatch):
    monkeypatch.setattr(sh, "SHADOW_MAX_IN_FLIGHT", 2)
    s = slots()
    assert not s.take(101, 100)
    assert s.take(None, 100) and s.take(5, 100)
    assert not s.take(5, 100)
    assert s.dropped == {sh.DROP_TOO_LARGE: 1, sh.DROP_BUSY: 1} and s.in_flight == 2


def test_the_drops_and_copies_are_the_contracts_metrics():
    registry = CollectorRegistry()
    s = sh.ShadowSlots("split", "candidate", *sh.shadow_counters(registry))
    s.drop(sh.DROP_BUSY)
    assert s.take(None, 10)
    s.done("503", 0)
    labels = {"splitter": "split", "api": "candidate"}
    assert registry.get_sample_value("myelin_shadow_dropped_total", {**labels, "reason": "busy"}) == 1
    assert registry.get_sample_value("myelin_shadow_requests_total", {**labels, "status": "503"}) == 1
