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

Nothing outside `open_store` knows which implementation runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import contract as c
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

    async def enqueue(self, job: Submission) -> None: ...

    async def claim(self, n: int, visibility_timeout: float) -> list[Claim]:
        """Up to n jobs (may wait briefly for one to arrive: the store decides how long)."""

    async def complete(self, claim: Claim, result: bytes, content_type: str) -> bool: ...

    async def fail(self, claim: Claim, error: dict[str, Any], dead_letter: bool = False) -> bool: ...

    async def release(self, claim: Claim) -> None: ...

    async def get(self, job_id: str) -> JobState | None: ...

    async def depth(self) -> int:
        """Jobs waiting to start."""

    def wake(self) -> None:
        """Stop a waiting `claim` early (a drain began)."""


def open_store(settings: Settings, spec: AsyncApiSpec) -> JobStore:
    """The store this process uses for `spec`, from the settings read at start-up (not yet opened)."""
    if settings.async_store == c.ASYNC_STORE_SQS:
        from .store_sqs import SqsJobStore

        return SqsJobStore(settings.async_queue_url, settings.async_dead_letter_queue_url,
                           settings.async_storage_uri, spec.retention_seconds)
    from .store_sqlite import SqliteJobStore

    return SqliteJobStore(os.path.join(settings.state_dir, f"{spec.name}.sqlite3"), spec.retention_seconds)
