"""`kind: RealtimeAPI`: one HTTP request, one prediction."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .fields import ApiBase, AutoscalingSpec, BatchingSpec
from .rollout import RolloutSpec


class ApiSpec(ApiBase):
    """`kind: RealtimeAPI`: each request is answered with its prediction (or a stream of items, for a `predict` that
    yields). `api.yaml` needs only a `name`; everything else has a default."""

    kind: Literal["RealtimeAPI"] = Field("RealtimeAPI", description="`RealtimeAPI` (may be left out).")
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    batching: BatchingSpec | None = None
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)

    @model_validator(mode="after")
    def _canary_needs_replicas(self) -> "ApiSpec":
        if self.rollout.canary and self.autoscaling.min_replicas == 0:
            raise ValueError(
                "rollout.strategy: canary needs autoscaling.min_replicas 1 or more: an API scaled to zero is reached "
                "through KEDA's HTTP interceptor, which routes to one Service, so the load balancer cannot split its "
                "requests between the old and the new version; set min_replicas to 1, or use strategy rolling")
        return self

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


