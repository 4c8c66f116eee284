"""`kind: AsyncAPI`: submit a payload now, fetch the result later; queue-backed, scales to zero.

The same predictor, compute, serving and networking sections as a RealtimeAPI; autoscaling targets
the job queue's depth instead of in-flight requests, `jobs` sets retention and attempts, and
`batching` is refused (a job is one `predict` call).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .fields import ApiBase, Duration, _Strict, parse_memory

#: SQS's longest visibility timeout (12 h): the bound on serving.timeout for an AsyncAPI.
MAX_VISIBILITY_S = 12 * 3600.0
#: SQS keeps a message at most 14 days; a job still queued after that is gone from the queue.
MAX_QUEUE_RETENTION_S = 14 * 86400.0


def visibility_timeout(timeout_s: float) -> float:
    """How long a started job stays invisible to other workers: its deadline plus time to store the
    outcome (10%, at least 5 s). A worker that dies mid-job has its job picked up again after this."""
    return timeout_s + max(5.0, 0.1 * timeout_s)


class QueueAutoscalingSpec(_Strict):
    """Workers scale on the queue (KEDA's `aws-sqs-queue` scaler in the cloud), down to zero."""

    min_replicas: int = Field(0, ge=0, le=1000, description="Worker replicas with an "
                              "empty queue (0: workers, and their GPU nodes, scale to zero).")
    max_replicas: int = Field(100, ge=1, le=1000, description="Ceiling of worker replicas.")
    target_queue_depth: int | None = Field(
        None, ge=1, le=100000,
        description="Jobs queued or running per worker replica to aim for; defaults to `serving.max_concurrency`.",
    )
    polling_interval: Duration = Field(Duration("30s"), description="How often the queue's depth is read.")
    cooldown_period: Duration = Field(
        Duration("5m"), description="How long the queue must stay empty before the workers scale to zero."
    )

    @property
    def initial_replicas(self) -> int:
        """Workers at first deploy: the floor (jobs arriving scale them up)."""
        return self.min_replicas

    @model_validator(mode="after")
    def _ordering(self) -> "QueueAutoscalingSpec":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is greater than max_replicas ({self.max_replicas})")
        if self.polling_interval.seconds < 1:
            raise ValueError("polling_interval must be at least 1s")
        return self


class JobsSpec(_Strict):
    """How long jobs are kept, how often a job is started, and what the job store may hold."""

    retention: Duration = Field(
        Duration("7d"), description="How long a job (payload, status, result) is kept after "
        "submission; then `GET` answers 404; must be longer than `serving.timeout`."
    )
    max_attempts: int = Field(
        3, ge=1, le=100,
        description="Starts of a job whose worker stops (crash, kill, node loss) before it is failed and dead-lettered.",
    )
    max_queued: int = Field(
        10000, ge=1, le=10_000_000,
        description="Jobs submitted and not finished (waiting or running) at most; a submit beyond it gets "
        "`503 overloaded` with `Retry-After: 5`, before its body is read, and nothing is stored.",
    )
    max_stored_bytes: str = Field(
        "10Gi",
        description="Bytes the job store may hold for this API (payloads, stored headers, results and errors of the "
        "jobs kept for `retention`, dead letters); a submit that would go beyond it gets 503 with Retry-After and "
        "nothing is stored; a result that would go beyond it fails its job (`result_too_large`) and is not stored; at "
        "least `serving.max_body_size`. Exact on the embedded store; approximate on SQS + S3 (see AsyncAPI, Where jobs "
        "live).",
    )

    @field_validator("max_stored_bytes", mode="before")
    @classmethod
    def _stored(cls, v: Any) -> str:
        v = str(v)
        if parse_memory(v) < 1:
            raise ValueError("must be at least 1 byte")
        return v

    @property
    def max_stored(self) -> int:
        """jobs.max_stored_bytes in bytes."""
        return parse_memory(self.max_stored_bytes)


class AsyncApiSpec(ApiBase):
    """`kind: AsyncAPI`: a `POST` stores the payload as a job and answers `202 {"id"}` at once; a worker runs
    `predict`, and `GET <endpoint>/<id>` returns the job's status and result. It has the same `predictor`, `compute`,
    `serving`, `update_strategy` and `networking` fields as a RealtimeAPI; `autoscaling` targets the job queue
    instead, `jobs` is its own, and `batching` is refused (each job is one `predict` call). `serving.timeout` is per
    job, from its start (at most 10h), and sets the visibility timeout: `serving.timeout` + 10% (at least 5 s).
    `serving.max_concurrency` is the jobs running at once per replica; `serving.max_queue_length` does not apply
    (the store is the queue)."""

    kind: Literal["AsyncAPI"] = Field("AsyncAPI", description="`AsyncAPI`.")
    autoscaling: QueueAutoscalingSpec = Field(default_factory=QueueAutoscalingSpec)
    jobs: JobsSpec = Field(default_factory=JobsSpec)
    #: Always None: present so code that reads `spec.batching` works for every kind.
    batching: Any = Field(None, exclude=True)

    @field_validator("batching", mode="before")
    @classmethod
    def _no_batching(cls, v: Any) -> None:
        if v is not None:
            raise ValueError(
                "not available for kind AsyncAPI: each job is one predict call; remove `batching` "
                "(or use kind RealtimeAPI for batched requests)"
            )
        return None

    @field_validator("networking")
    @classmethod
    def _native_only(cls, v: Any) -> Any:
        other = [p for p in v.protocols if p != "myelin"]
        if other:
            raise ValueError(f"protocols: kind AsyncAPI speaks only myelin (submit a job, read it by id), not "
                             f"{', '.join(other)}; use kind RealtimeAPI to serve {', '.join(other)}")
        return v

    @model_validator(mode="after")
    def _limits(self) -> "AsyncApiSpec":
        timeout = self.serving.timeout.seconds
        if visibility_timeout(timeout) > MAX_VISIBILITY_S:
            raise ValueError(
                f"serving.timeout ({self.serving.timeout}) is too long for a job: at most 10h, so that a job "
                "whose worker dies can be picked up again (the queue's visibility timeout is at most 12h)"
            )
        if self.jobs.max_stored < self.serving.max_body_bytes:
            raise ValueError(
                f"jobs.max_stored_bytes ({self.jobs.max_stored_bytes}) is smaller than serving.max_body_size "
                f"({self.serving.max_body_size}): a job of the largest size accepted could never be stored"
            )
        if self.jobs.retention.seconds <= timeout:
            raise ValueError(
                f"jobs.retention ({self.jobs.retention}) must be longer than serving.timeout ({self.serving.timeout}): "
                "a job must outlive its own run"
            )
        return self

    @property
    def target_queue_depth(self) -> int:
        return self.autoscaling.target_queue_depth or self.serving.max_concurrency

    @property
    def target_in_flight(self) -> float:
        """Not this kind's autoscaling signal (the queue depth is): the jobs a worker replica runs at most,
        so code that shows in-flight against the target for every API works for this kind too."""
        return float(self.serving.max_concurrency)

    @property
    def visibility_timeout(self) -> float:
        return visibility_timeout(self.serving.timeout.seconds)

    @property
    def retention_seconds(self) -> float:
        return self.jobs.retention.seconds

    @property
    def retention_days(self) -> int:
        """The storage prefix's lifecycle expiration: S3 counts whole days (at least 1), rounded up."""
        return max(1, math.ceil(self.jobs.retention.seconds / 86400))

    @property
    def queue_retention_seconds(self) -> int:
        """SQS MessageRetentionPeriod for the API's queue: the retention, within SQS's 60 s to 14 days."""
        return int(min(max(self.jobs.retention.seconds, 60.0), MAX_QUEUE_RETENTION_S))

    @property
    def dead_letter_max_receive_count(self) -> int:
        """The queue's redrive backstop: the worker dead-letters a job itself after max_attempts starts."""
        return self.jobs.max_attempts + 1
