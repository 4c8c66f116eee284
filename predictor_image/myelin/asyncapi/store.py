"""The job store: one small Protocol, two implementations, chosen once at start-up.

`SqliteJobStore` (embedded, the default: `myelin local`, `myelin serve`) and `SqsJobStore` (the
cloud: an SQS queue and an S3 prefix) keep the same state machine:

    enqueue ──► in_queue ──claim──► in_progress ──complete──► completed
                   ▲                     │ ──fail──────────► failed (dead-lettered after max_attempts)
                   └── release, or the visibility timeout passes (the worker died)

- `enqueue` returns only once the payload is durably stored.
- `claim` hands out up to n jobs for `visibility_timeout` seconds; a job not completed, failed or
  released by then is handed out again (at-least-once), its `attempt` one higher.
- `complete`/`fail` record the outcome once: the first outcome of a job wins, a later one (a
  duplicate delivery that also finished) returns False and changes nothing.
- `release` hands an unfinished job back at once, without counting the attempt (shutdown).
- `get` answers a job's state, or None when unknown or past the retention.
- `usage` answers what the store holds for the API: jobs not finished and bytes stored. `enqueue`
  refuses (`StoreFull`, a 503 with Retry-After) a job beyond `jobs.max_queued` or
  `jobs.max_stored_bytes`, and then stores nothing. The SQLite store checks inside the transaction
  that stores the job: exact. The SQS store checks against sampled queue attributes and object
  sizes plus what this process stored since: approximate (see store_sqs.py).

Nothing outside `open_store` knows which implementation runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import contract as c
from ..errors import HTTPError, retry_after
from ..settings import Settings
from ..spec import AsyncApiSpec

IN_QUEUE = "in_queue"
IN_PROGRESS = "in_progress"
COMPLETED = "completed"
FAILED = "failed"


def new_job_id() -> str:
    """32 random hex digits: unguessable, and safe in a URL, a file name and an S3 key."""
    return os.urandom(16).hex()


def valid_job_id(job_id: str) -> bool:
    return len(job_id) == 32 and all(ch in "0123456789abcdef" for ch in job_id)


@dataclass(frozen=True)
class Submission:
    """A request to run later: the body as received and what the predictor may ask for."""

    id: str
    body: bytes
    content_type: str
    query_string: str
    headers: list[tuple[str, str]]
    created_at: float


@dataclass
class Claim:
    """A job handed to a worker until its visibility timeout; `token` is the store's own handle."""

    id: str
    attempt: int
    body: bytes
    content_type: str
    query_string: str
    headers: list[tuple[str, str]]
    created_at: float
    started_at: float
    token: Any = field(default=None, repr=False)


@dataclass(frozen=True)
class JobState:
    id: str
    status: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    result: bytes | None = None
    result_type: str | None = None
    error: dict[str, Any] | None = None


#: Retry-After of a submit refused because the store is full: jobs finish, and retention frees bytes, over time.
FULL_RETRY_AFTER_S = 5


@dataclass(frozen=True)
class JobLimits:
    """jobs.max_queued and jobs.max_stored_bytes of one API."""

    max_queued: int
    max_stored_bytes: int

    @classmethod
    def of(cls, spec: AsyncApiSpec) -> "JobLimits":
        return cls(spec.jobs.max_queued, spec.jobs.max_stored)

    def check(self, usage: "Usage", incoming_bytes: int) -> None:
        """Raise StoreFull if one more job of `incoming_bytes` does not fit beside `usage`."""
        if usage.queued + 1 > self.max_queued:
            raise StoreFull("jobs.max_queued", f"{usage.queued} jobs are waiting or running, the most "
                            f"jobs.max_queued ({self.max_queued}) allows")
        if usage.stored_bytes + incoming_bytes > self.max_stored_bytes:
            raise StoreFull("jobs.max_stored_bytes", f"the store holds {usage.stored_bytes} bytes for this API; "
                            f"{incoming_bytes} more would exceed jobs.max_stored_bytes ({self.max_stored_bytes})")


@dataclass(frozen=True)
class Usage:
    """What the store holds for one API."""

    #: Jobs submitted and not finished: waiting to start or running.
    queued: int
    #: Bytes of the API's records: payloads, stored headers, query strings, results, errors, dead letters.
    stored_bytes: int


class StoreFull(HTTPError):
    """A submit beyond jobs.max_queued or jobs.max_stored_bytes: 503 with Retry-After; nothing was stored."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(503, "overloaded", f"this API's job store is full: {message}; retry later",
                         [retry_after(FULL_RETRY_AFTER_S)])


class StoreError(Exception):
    """The store cannot be used (bad location, unreachable queue or bucket): names what and why."""

    def __init__(self, where: str, message: str):
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}")


class JobStore(Protocol):
    def open(self) -> None:
        """Blocking: create or check the store; raise StoreError naming what is wrong."""

    def close(self) -> None: ...

    async def enqueue(self, job: Submission) -> None:
        """Store the job durably; StoreFull (nothing stored) when it would exceed the API's JobLimits."""

    async def claim(self, n: int, visibility_timeout: float) -> list[Claim]:
        """Up to n jobs (may wait briefly for one to arrive: the store decides how long)."""

    async def complete(self, claim: Claim, result: bytes, content_type: str) -> bool: ...

    async def fail(self, claim: Claim, error: dict[str, Any], dead_letter: bool = False) -> bool: ...

    async def release(self, claim: Claim) -> None: ...

    async def get(self, job_id: str) -> JobState | None: ...

    async def depth(self) -> int:
        """Jobs waiting to start."""

    async def usage(self) -> Usage:
        """Jobs not finished and bytes stored for the API (what JobLimits bounds)."""

    def wake(self) -> None:
        """Stop a waiting `claim` early (a drain began)."""


def open_store(settings: Settings, spec: AsyncApiSpec) -> JobStore:
    """The store this process uses for `spec`, from the settings read at start-up (not yet opened)."""
    if settings.async_store == c.ASYNC_STORE_SQS:
        from .store_sqs import SqsJobStore

        return SqsJobStore(settings.async_queue_url, settings.async_dead_letter_queue_url,
                           settings.async_storage_uri, spec.retention_seconds, JobLimits.of(spec))
    from .store_sqlite import SqliteJobStore

    return SqliteJobStore(os.path.join(settings.state_dir, f"{spec.name}.sqlite3"), spec.retention_seconds,
                          JobLimits.of(spec))
