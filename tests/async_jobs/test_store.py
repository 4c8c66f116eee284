"""The job store's state machine in-process, the same assertions against both implementations:
SQLite on a real file, and SQS + S3 through boto3 against moto in server mode on 127.0.0.1."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from myelin.asyncapi.store import COMPLETED, FAILED, IN_PROGRESS, IN_QUEUE, Submission, new_job_id
from myelin.asyncapi.store_sqlite import SqliteJobStore
from myelin.asyncapi.store_sqs import SqsJobStore

from .conftest import AWS_ENV, Backend


@pytest.fixture(params=["sqlite", "sqs"])
def make_store(request, tmp_path, monkeypatch):
    """make_store(retention_s) -> an opened store of this param's kind, closed at teardown."""
    opened = []
    if request.param == "sqs":
        moto = request.getfixturevalue("moto")
        for key, value in {**AWS_ENV, "AWS_ENDPOINT_URL": moto.url}.items():
            monkeypatch.setenv(key, value)

    def make(retention_s: float = 3600.0):
        if request.param == "sqlite":
            store = SqliteJobStore(str(tmp_path / f"store-{len(opened)}.sqlite3"), retention_s)
        else:
            b = Backend("sqs", tmp_path, moto)
            store = SqsJobStore(b.queue_url, b.dlq_url, f"s3://{b.bucket}/{b.prefix}", retention_s)
            store.backend = b
        store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def run(coro):
    """Run a coroutine on a private loop: asyncio.run would leave the main thread without a current event loop,
    which later tests (Pulumi's runtime) rely on."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def job(body: bytes = b'{"x": 1}', content_type: str = "application/json") -> Submission:
    return Submission(id=new_job_id(), body=body, content_type=content_type, query_string="a=1",
                      headers=[("x-trace", "t1")], created_at=time.time())


async def claim_one(store, visibility: float = 30.0, tries: int = 5):
    for _ in range(tries):  # an empty claim may just have waited out its poll
        claims = await store.claim(1, visibility)
        if claims:
            assert len(claims) == 1
            return claims[0]
    raise AssertionError("no job claimed")


def test_enqueue_claim_complete_and_first_outcome_wins(make_store):
    async def scenario():
        store = make_store()
        j = job()
        await store.enqueue(j)
        queued = await store.get(j.id)
        assert queued.status == IN_QUEUE and queued.started_at is None and abs(queued.created_at - j.created_at) < 1e-3
        assert await store.depth() == 1
        claim = await claim_one(store)
        assert (claim.id, claim.attempt, claim.body, claim.content_type) == (j.id, 1, j.body, "application/json")
        assert (claim.query_string, claim.headers) == ("a=1", [("x-trace", "t1")])
        running = await store.get(j.id)
        assert running.status == IN_PROGRESS and running.started_at >= running.created_at
        assert await store.depth() == 0
        assert await store.complete(claim, b'{"ok":true}', "application/json") is True
        done = await store.get(j.id)
        assert (done.status, done.result, done.result_type) == (COMPLETED, b'{"ok":true}', "application/json")
        assert done.finished_at >= done.started_at
        # A duplicate delivery that also finished changes nothing.
        assert await store.complete(claim, b'{"ok":false}', "application/json") is False
        assert await store.fail(claim, {"type": "late"}) is False
        assert (await store.get(j.id)).result == b'{"ok":true}'
        assert await store.claim(1, 30.0) == []
        assert await store.get(new_job_id()) is None

    run(scenario())


def test_a_job_not_finished_within_its_visibility_timeout_is_handed_out_again(make_store):
    async def scenario():
        store = make_store()
        j = job()
        await store.enqueue(j)
        first = await claim_one(store, visibility=1.0)
        await asyncio.sleep(1.3)  # its worker "died"
        assert (await store.get(j.id)).status in (IN_QUEUE, IN_PROGRESS)
        second = await claim_one(store, visibility=30.0)
        assert (second.id, second.attempt) == (j.id, 2)
        # Both attempts finish: exactly one outcome is recorded.
        assert await store.complete(second, b"2", "text/plain") is True
        assert await store.complete(first, b"1", "text/plain") is False
        assert (await store.get(j.id)).result == b"2"

    run(scenario())


def test_release_hands_a_job_back_without_counting_the_attempt(make_store):
    async def scenario():
        store = make_store()
        j = job(b"hello", "text/plain")
        await store.enqueue(j)
        claim = await claim_one(store)
        await store.release(claim)
        assert (await store.get(j.id)).status == IN_QUEUE
        again = await claim_one(store)
        assert (again.id, again.attempt, again.body) == (j.id, 1, b"hello")

    run(scenario())


def test_dead_lettered_job_is_failed_and_kept(make_store):
    async def scenario():
        store = make_store()
        j = job()
        await store.enqueue(j)
        claim = await claim_one(store)
        error = {"type": "attempts_exhausted", "message": "gone"}
        assert await store.fail(claim, error, dead_letter=True) is True
        state = await store.get(j.id)
        assert (state.status, state.error) == (FAILED, error)
        return store, j.id

    store, job_id = run(scenario())
    if isinstance(store, SqliteJobStore):
        with sqlite3.connect(store.path) as conn:
            rows = conn.execute("SELECT id, attempts, body FROM dead_letters").fetchall()
        assert rows == [(job_id, 1, b'{"x": 1}')]  # the payload is kept with it
    else:
        assert store.backend.dead_letters() == [job_id]


def test_retention_expires_jobs_queued_or_done(make_store):
    async def scenario():
        store = make_store(retention_s=1.0)
        done, waiting = job(), job()
        await store.enqueue(done)
        claim = await claim_one(store)
        await store.complete(claim, b"{}", "application/json")
        await store.enqueue(waiting)
        assert (await store.get(done.id)).status == COMPLETED
        await asyncio.sleep(1.2)
        assert await store.get(done.id) is None
        assert await store.get(waiting.id) is None
        assert await store.claim(1, 30.0) == []  # an expired job is never started
        assert await store.depth() == 0
        return store

    store = run(scenario())
    if isinstance(store, SqliteJobStore):  # and the rows are gone from the file, not only hidden
        with sqlite3.connect(store.path) as conn:
            assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0


def test_sqlite_store_uses_wal_and_commits_concurrent_submits_together(tmp_path):
    store = SqliteJobStore(str(tmp_path / "s.sqlite3"), 3600.0)
    store.open()
    try:
        async def burst():
            jobs = [job(str(i).encode(), "text/plain") for i in range(300)]
            await asyncio.gather(*(store.enqueue(j) for j in jobs))
            return jobs

        jobs = run(burst())
        with sqlite3.connect(store.path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("SELECT count(*) FROM jobs WHERE status = 'in_queue'").fetchone()[0] == 300
            bodies = {r[0]: r[1] for r in conn.execute("SELECT id, body FROM jobs")}
        assert all(bodies[j.id] == j.body for j in jobs)
    finally:
        store.close()


def test_a_state_dir_that_cannot_be_created_is_a_clear_error(tmp_path):
    from myelin.asyncapi.store import StoreError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = SqliteJobStore(str(blocker / "state" / "api.sqlite3"), 60.0)
    with pytest.raises(StoreError) as info:
        store.open()
    assert "MYELIN_STATE_DIR" in str(info.value) and str(blocker) in str(info.value)
