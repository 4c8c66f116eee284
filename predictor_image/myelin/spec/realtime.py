"""`kind: RealtimeAPI`: one HTTP request, one prediction."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .fields import ApiBase, AutoscalingSpec, BatchingSpec


class ApiSpec(ApiBase):
    kind: Literal["RealtimeAPI"] = "RealtimeAPI"
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    batching: BatchingSpec | None = None

    @model_validator(mode="after")
    def _batches_can_fill(self) -> "ApiSpec":
        if self.batching is not None:
            per_process = self.serving.per_process(self.serving.max_concurrency)
            if per_process < self.batching.max_batch_size:
                procs = self.serving.processes
                raise ValueError(
                    f"serving.max_concurrency ({self.serving.max_concurrency}"
                    + (f", i.e. {per_process} per process with {procs} processes" if procs > 1 else "")
                    + f") is less than batching.max_batch_size ({self.batching.max_batch_size}): requests in a "
                    "running batch count against max_concurrency, so batches could never fill; set "
                    f"serving.max_concurrency to at least max_batch_size{' × processes' if procs > 1 else ''}"
                )
        return self

    @property
    def target_in_flight(self) -> float:
        return self.autoscaling.target_in_flight or float(self.serving.max_concurrency)


