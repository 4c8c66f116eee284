"""myelin.logs: every request gets its line, in order, in the same JSON format, written in batches."""

from __future__ import annotations

import asyncio
import io
import json

import orjson

from myelin import logs


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_request_lines_keep_their_fields_and_order():
    stream = io.StringIO()
    log = logs.RequestLog(stream)

    async def main():
        log.request("kmeans", "abc-1", "POST", "/kmeans", 200, 0.0012345)
        log.request("kmeans", 'q"uo\\te\x01é', "POST", "/kmeans", 503, 0.5, "overloaded")
        assert stream.getvalue() == ""  # nothing is written on the request's path
        await asyncio.sleep(logs.FLUSH_INTERVAL_S * 5)

    asyncio.run(main())
    first, second = lines(stream)
    assert list(first) == ["time", "level", "api", "request_id", "method", "path", "status", "latency_ms"]
    assert first["time"].endswith("Z") and len(first["time"]) == len("2026-01-01T00:00:00.000Z")
    assert (first["level"], first["api"], first["request_id"], first["status"], first["latency_ms"]) == (
        "info", "kmeans", "abc-1", 200, round(0.0012345 * 1000, 3))
    assert list(second)[-1] == "error" and second["error"] == "overloaded"
    assert (second["level"], second["request_id"], second["latency_ms"]) == ("error", 'q"uo\\te\x01é', 500.0)


def test_the_line_is_what_orjson_writes_for_the_same_entry():
    stream = io.StringIO()
    log = logs.RequestLog(stream)
    log.request("api", "id", "POST", "/p", 200, 0.25)  # no loop: written at once
    entry = json.loads(stream.getvalue())
    expected = orjson.dumps({"time": entry["time"], "level": "info", "api": "api", "request_id": "id",
                             "method": "POST", "path": "/p", "status": 200, "latency_ms": 250.0})
    assert stream.getvalue().encode() == expected + b"\n"


def test_every_request_is_logged_across_many_batches_with_events_in_order():
    stream = io.StringIO()
    log = logs.RequestLog(stream)
    n = logs.FLUSH_LINES * 7 + 3

    async def main():
        for i in range(n):
            log.request("a", f"r{i}", "POST", "/a", 200, 0.001)
            if i == 100:
                log.event("warning", "in the middle", request_id="event")
            if i % 50 == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(logs.FLUSH_INTERVAL_S * 5)

    asyncio.run(main())
    ids = [line["request_id"] for line in lines(stream)]
    assert ids == [f"r{i}" for i in range(101)] + ["event"] + [f"r{i}" for i in range(101, n)]


def test_pending_lines_are_written_by_flush_at_shutdown():
    stream = io.StringIO()
    log = logs.RequestLog(stream)

    async def main():
        log.request("a", "last", "POST", "/a", 200, 0.001)
        log.flush()  # what the server does when it stops (and at exit)
        assert [line["request_id"] for line in lines(stream)] == ["last"]

    asyncio.run(main())
    log._flush_at_exit()
    assert len(lines(stream)) == 1


def test_an_unencodable_value_still_gives_a_line():
    stream = io.StringIO()
    log = logs.RequestLog(stream)
    log.request("a", "id", "POST", "/a", 500, 0.001, "bad \ud800 surrogate")
    (line,) = lines(stream)
    assert line["request_id"] == "id" and "surrogate" in line["error"]
