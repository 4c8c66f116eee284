"""The embedded job store: one SQLite file per API (WAL mode, the standard library's sqlite3).

Durability: an `enqueue` returns once its transaction is committed with `synchronous=FULL` (the WAL
is fsynced), so a 202 survives `kill -9` and a power cut. Claims, outcomes and releases commit with
`synchronous=NORMAL`: they survive a killed process (the WAL is in the OS's cache) and a power cut
can at most lose the latest ones, which then run again (delivery is at-least-once anyway). Writes go
through one writer thread per store that commits whatever is pending as one transaction (group
commit): concurrent submits share an fsync instead of queueing for one each. Reads (status, depth) use their own connections,
which WAL lets run beside the writer. Several processes may share the file (`serving.processes`):
SQLite's locks order their writes, and an idle worker looks for jobs another process stored every
`POLL_S`.

A claim's token is its attempt number: a job claimed again after its visibility timeout has a
higher one, so a stale worker's `release` changes nothing.

Bounds (jobs.max_queued, jobs.max_stored_bytes): the one-row `usage` table holds the jobs not
finished and the bytes stored (payload, stored headers and query string, result, error; dead
letters too), kept by triggers in the same transactions as the rows, so every process sharing the
file sees the same figures. `enqueue` reads them in the transaction that would store the job and
refuses it (StoreFull, nothing written) beyond either bound: the bound is exact. The database file
also holds SQLite's own overhead (pages, indexes, the WAL, whose size after a checkpoint is capped by
`journal_size_limit`), and freed pages are reused rather than given back to the file system.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import orjson

from .. import contract as c
from .store import (COMPLETED, FAILED, IN_PROGRESS, IN_QUEUE, Claim, JobLimits, JobState, StoreError, Submission,
                    Usage)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    visible_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    content_type TEXT NOT NULL,
    query_string TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB,
    result BLOB,
    result_type TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_waiting ON jobs (visible_at) WHERE status IN ('in_queue', 'in_progress');
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
CREATE TABLE IF NOT EXISTS dead_letters (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    dead_at REAL NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT NOT NULL,
    content_type TEXT NOT NULL,
    query_string TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB
);
"""

#: Bytes a row of `jobs` (or of `dead_letters`, which has no result) stores for the API; `_stored_bytes`
#: is the same sum for a job about to be stored.
_JOB_BYTES = ("(ifnull(length(X.body), 0) + length(CAST(X.headers AS BLOB)) + length(CAST(X.query_string AS BLOB))"
              " + ifnull(length(X.result), 0) + ifnull(length(CAST(X.error AS BLOB)), 0))")
_DEAD_BYTES = ("(ifnull(length(X.body), 0) + length(CAST(X.headers AS BLOB)) + length(CAST(X.query_string AS BLOB))"
               " + length(CAST(X.error AS BLOB)))")
_UNFINISHED = "(X.status IN ('in_queue', 'in_progress'))"


def _usage_schema() -> str:
    """The `usage` row (computed once from the rows already there) and the triggers that keep it."""
    job = {v: _JOB_BYTES.replace("X.", f"{v}.") for v in ("NEW", "OLD")}
    dead = {v: _DEAD_BYTES.replace("X.", f"{v}.") for v in ("NEW", "OLD")}
    open_ = {v: _UNFINISHED.replace("X.", f"{v}.") for v in ("NEW", "OLD")}
    plain = {"job": _JOB_BYTES.replace("X.", ""), "dead": _DEAD_BYTES.replace("X.", ""),
             "open": _UNFINISHED.replace("X.", "")}
    return f"""
CREATE TABLE IF NOT EXISTS usage (id INTEGER PRIMARY KEY CHECK (id = 1), queued INTEGER NOT NULL,
                                  stored_bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO usage (id, queued, stored_bytes) VALUES (1,
    (SELECT count(*) FROM jobs WHERE {plain["open"]}),
    (SELECT ifnull(sum({plain["job"]}), 0) FROM jobs) + (SELECT ifnull(sum({plain["dead"]}), 0) FROM dead_letters));
CREATE TRIGGER IF NOT EXISTS usage_job_in AFTER INSERT ON jobs BEGIN
    UPDATE usage SET queued = queued + {open_["NEW"]}, stored_bytes = stored_bytes + {job["NEW"]} WHERE id = 1;
END;
CREATE TRIGGER IF NOT EXISTS usage_job_change AFTER UPDATE ON jobs BEGIN
    UPDATE usage SET queued = queued + {open_["NEW"]} - {open_["OLD"]},
                     stored_bytes = stored_bytes + {job["NEW"]} - {job["OLD"]} WHERE id = 1;
END;
CREATE TRIGGER IF NOT EXISTS usage_job_out AFTER DELETE ON jobs BEGIN
    UPDATE usage SET queued = queued - {open_["OLD"]}, stored_bytes = stored_bytes - {job["OLD"]} WHERE id = 1;
END;
CREATE TRIGGER IF NOT EXISTS usage_dead_in AFTER INSERT ON dead_letters BEGIN
    UPDATE usage SET stored_bytes = stored_bytes + {dead["NEW"]} WHERE id = 1;
END;
CREATE TRIGGER IF NOT EXISTS usage_dead_out AFTER DELETE ON dead_letters BEGIN
    UPDATE usage SET stored_bytes = stored_bytes - {dead["OLD"]} WHERE id = 1;
END;
"""


def _stored_bytes(body: bytes, headers: str, query_string: str) -> int:
    """What storing a job adds to `usage.stored_bytes` (as _JOB_BYTES counts it)."""
    return len(body) + len(headers.encode()) + len(query_string.encode())


#: After a checkpoint, the WAL file is truncated to at most this (SQLite keeps it at its largest otherwise).
WAL_SIZE_LIMIT = 64 * 2**20

_WAITING = "status IN ('in_queue', 'in_progress') AND visible_at <= :now"
_MAX_GROUP = 512


#: The files hold payloads, stored request headers and results: only their owner may read them. The folder is
#: made 0700 and the database 0600 when they are created (not changed afterwards, which would leave a moment when
#: they are readable); SQLite creates its `-wal` and `-shm` files with the database file's permissions.
FOLDER_MODE = 0o700
FILE_MODE = 0o600


def _create_private(folder: str, path: str) -> None:
    """Create the state folder (0700) and the empty database file (0600) unless they exist. A database left by
    an earlier version with wider permissions (0644) is narrowed, with its -wal and -shm files."""
    os.makedirs(folder, mode=FOLDER_MODE, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), FILE_MODE))
    except FileExistsError:
        for existing in (path, f"{path}-wal", f"{path}-shm"):
            try:
                mode = os.stat(existing).st_mode & 0o777
                if mode & 0o077:
                    os.chmod(existing, mode & 0o700)
            except (FileNotFoundError, PermissionError):  # not there, or not ours to change: left as it is
                pass


def _settle(fut: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


class SqliteJobStore:
    #: How often an idle worker looks for jobs stored by another process (its own wake it at once).
    POLL_S = 0.25

    def __init__(self, path: str, retention_s: float, limits: JobLimits | None = None):
        self.path = path
        self.retention = retention_s
        self.limits = limits
        self._purge_every = min(60.0, retention_s)
        self._next_purge = 0.0
        self._ops: queue.SimpleQueue = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._arrived: asyncio.Event | None = None

    # ---------------------------------------------------------------- set-up
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        # INSERT OR REPLACE deletes the row it replaces: with this, that fires the delete triggers (usage).
        conn.execute("PRAGMA recursive_triggers = ON")
        return conn

    def open(self) -> None:
        folder = os.path.dirname(os.path.abspath(self.path))
        where = f"{c.STATE_DIR_ENV} ({folder})"
        try:
            _create_private(folder, self.path)
            conn = self._connect()
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise StoreError(where, f"{self.path} cannot use WAL mode (journal_mode is {mode}); "
                                            "put the state directory on a local file system")
                conn.executescript(SCHEMA)
                conn.executescript(f"BEGIN IMMEDIATE; {_usage_schema()} COMMIT;")
            finally:
                conn.close()
        except (OSError, sqlite3.Error) as err:
            raise StoreError(where, f"cannot use {self.path} for the job store: {err}") from None
        self._writer = threading.Thread(target=self._write_loop, name=f"jobs-writer-{os.path.basename(self.path)}",
                                         daemon=True)
        self._writer.start()
        self._reader = ThreadPoolExecutor(2, thread_name_prefix="jobs-reader")

    def close(self) -> None:
        if self._writer is not None:
            self._ops.put(None)
            self._writer.join(timeout=5.0)
            self._writer = None
        if self._reader is not None:
            self._reader.shutdown(wait=True)
            self._reader = None
        for conn in self._reader_conns:
            conn.close()
        self._reader_conns.clear()

    # ---------------------------------------------------------------- plumbing
    def _write_loop(self) -> None:
        conn = self._connect()
        try:
            while True:
                op = self._ops.get()
                if op is None:
                    return
                batch = [op]
                while len(batch) < _MAX_GROUP:
                    try:
                        more = self._ops.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        self._ops.put(None)  # finish this group, then stop
                        break
                    batch.append(more)
                self._commit_group(conn, batch)
        finally:
            conn.close()

    @staticmethod
    def _commit_group(conn: sqlite3.Connection, batch: list) -> None:
        """Run every pending write in one transaction (one fsync at most); one failing op rolls back only itself."""
        outcomes: list[tuple[Any, Any, BaseException | None]] = []
        durable = any(op[3] for op in batch)
        try:
            conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            conn.execute("BEGIN IMMEDIATE")
            for fn, fut, loop, _ in batch:
                conn.execute("SAVEPOINT op")
                try:
                    outcomes.append((fn(conn), None))
                    conn.execute("RELEASE op")
                except Exception as err:  # noqa: BLE001 - handed to the caller
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((None, err))
            conn.execute("COMMIT")
        except Exception as err:  # noqa: BLE001 - the transaction itself failed (disk full, lock timeout)
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            outcomes = [(None, err) for _ in batch]
        for (fn, fut, loop, _), (result, error) in zip(batch, outcomes):
            try:
                loop.call_soon_threadsafe(_settle, fut, result, error)
            except RuntimeError:  # the loop closed: the process is exiting
                pass

    async def _write(self, fn: Callable[[sqlite3.Connection], Any], durable: bool = False) -> Any:
        """Run `fn` in the writer's next transaction; `durable`: that commit is fsynced before this returns."""
        if self._writer is None:
            raise StoreError(self.path, "the job store is closed")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._ops.put((fn, fut, loop, durable))
        return await fut

    def _reader_conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
            self._reader_conns.append(conn)
        return conn

    async def _read(self, sql: str, params: dict[str, Any]) -> Any:
        if self._reader is None:
            raise StoreError(self.path, "the job store is closed")
        return await asyncio.get_running_loop().run_in_executor(
            self._reader, lambda: self._reader_conn().execute(sql, params).fetchone())

    def _event(self) -> asyncio.Event:
        if self._arrived is None:
            self._arrived = asyncio.Event()
        return self._arrived

    def wake(self) -> None:
        if self._arrived is not None:
            self._arrived.set()

    # ---------------------------------------------------------------- the Protocol
    async def enqueue(self, job: Submission) -> None:
        row = {"id": job.id, "created_at": job.created_at, "content_type": job.content_type,
               "query_string": job.query_string, "headers": orjson.dumps(job.headers).decode(), "body": job.body}
        size = _stored_bytes(job.body, row["headers"], job.query_string)
        limits = self.limits

        def insert(conn: sqlite3.Connection) -> None:
            if limits is not None:  # in the transaction that stores it: exact, whatever other processes do
                queued, stored = conn.execute("SELECT queued, stored_bytes FROM usage WHERE id = 1").fetchone()
                limits.check(Usage(queued, stored), size)
            conn.execute(
                "INSERT INTO jobs (id, status, created_at, visible_at, content_type, query_string, headers, body) "
                "VALUES (:id, 'in_queue', :created_at, :created_at, :content_type, :query_string, :headers, :body)", row)

        await self._write(insert, durable=True)
        self._event().set()  # a worker of this process may be waiting

    async def claim(self, n: int, visibility_timeout: float) -> list[Claim]:
        arrived = self._event()
        arrived.clear()  # before looking: a job stored after the look sets it again

        def take(conn: sqlite3.Connection) -> list[Claim]:
            now = time.time()
            if now >= self._next_purge:
                self._purge(conn, now)
                self._next_purge = now + self._purge_every
            rows = conn.execute(
                "UPDATE jobs SET status = 'in_progress', attempts = attempts + 1, started_at = :now, "
                "visible_at = :until WHERE seq IN (SELECT seq FROM jobs WHERE " + _WAITING +
                " AND created_at > :cutoff ORDER BY visible_at LIMIT :n) "
                "RETURNING id, attempts, body, content_type, query_string, headers, created_at",
                {"now": now, "until": now + visibility_timeout, "n": n, "cutoff": now - self.retention}).fetchall()
            return [Claim(id=r[0], attempt=r[1], body=r[2] or b"", content_type=r[3], query_string=r[4],
                          headers=[tuple(h) for h in orjson.loads(r[5])], created_at=r[6], started_at=now,
                          token=r[1]) for r in rows]

        claims = await self._write(take)
        if claims:
            return claims
        try:
            await asyncio.wait_for(arrived.wait(), self.POLL_S)
        except asyncio.TimeoutError:
            pass
        return []

    def _purge(self, conn: sqlite3.Connection, now: float) -> None:
        """Jobs past their retention, done or not, and their dead letters."""
        cutoff = now - self.retention
        conn.execute("DELETE FROM jobs WHERE created_at <= ?", (cutoff,))
        conn.execute("DELETE FROM dead_letters WHERE created_at <= ?", (cutoff,))

    async def complete(self, claim: Claim, result: bytes, content_type: str) -> bool:
        def done(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE jobs SET status = 'completed', finished_at = ?, result = ?, result_type = ?, body = NULL "
                "WHERE id = ? AND status = 'in_progress'", (time.time(), result, content_type, claim.id))
            return cur.rowcount == 1

        return await self._write(done)

    async def fail(self, claim: Claim, error: dict[str, Any], dead_letter: bool = False) -> bool:
        text = orjson.dumps(error).decode()

        def failed(conn: sqlite3.Connection) -> bool:
            now = time.time()
            if dead_letter:
                conn.execute(
                    "INSERT OR REPLACE INTO dead_letters (id, created_at, dead_at, attempts, error, content_type, "
                    "query_string, headers, body) SELECT id, created_at, ?, attempts, ?, content_type, query_string, "
                    "headers, body FROM jobs WHERE id = ? AND status = 'in_progress'", (now, text, claim.id))
            cur = conn.execute(
                "UPDATE jobs SET status = 'failed', finished_at = ?, error = ?, body = NULL "
                "WHERE id = ? AND status = 'in_progress'", (now, text, claim.id))
            return cur.rowcount == 1

        return await self._write(failed)

    async def release(self, claim: Claim) -> None:
        def back(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE jobs SET status = 'in_queue', attempts = attempts - 1, started_at = NULL, visible_at = ? "
                "WHERE id = ? AND status = 'in_progress' AND attempts = ?", (time.time(), claim.id, claim.token))

        await self._write(back)
        self._event().set()

    async def get(self, job_id: str) -> JobState | None:
        now = time.time()
        row = await self._read(
            "SELECT status, created_at, started_at, finished_at, visible_at, result, result_type, error "
            "FROM jobs WHERE id = :id AND created_at > :cutoff", {"id": job_id, "cutoff": now - self.retention})
        if row is None:
            return None
        status, created, started, finished, visible_at, result, result_type, error = row
        if status == IN_PROGRESS and visible_at <= now:  # its worker stopped: waiting to be started again
            status, started = IN_QUEUE, None
        return JobState(id=job_id, status=status, created_at=created, started_at=started,
                        finished_at=finished if status in (COMPLETED, FAILED) else None,
                        result=result, result_type=result_type, error=orjson.loads(error) if error else None)

    async def usage(self) -> Usage:
        row = await self._read("SELECT queued, stored_bytes FROM usage WHERE id = 1", {})
        return Usage(int(row[0]), int(row[1]))

    async def depth(self) -> int:
        now = time.time()
        row = await self._read("SELECT count(*) FROM jobs WHERE " + _WAITING + " AND created_at > :cutoff",
                               {"now": now, "cutoff": now - self.retention})
        return int(row[0])
