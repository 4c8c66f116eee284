"""`kind: RealtimeAPI`: one HTTP request, one prediction."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .fields import (
    _DNS_LABEL,
    AutoscalingSpec,
    BatchingSpec,
    ComputeSpec,
    NetworkingSpec,
    PredictorSpec,
    ServingSpec,
    UpdateStrategySpec,
    _Strict,
)


class ApiSpec(_Strict):
    name: str = Field(..., description="DNS label naming the API and its Kubernetes objects.")
    kind: Literal["RealtimeAPI"] = "RealtimeAPI"
    predictor: PredictorSpec = Field(default_factory=PredictorSpec)
    compute: ComputeSpec = Field(default_factory=ComputeSpec)
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    serving: ServingSpec = Field(default_factory=ServingSpec)
    batching: BatchingSpec | None = None
    update_strategy: UpdateStrategySpec = Field(default_factory=UpdateStrategySpec)
    networking: NetworkingSpec = Field(default_factory=NetworkingSpec)

    @field_validator("name")
    @classmethod
    def _dns(cls, v: str) -> str:
        if not _DNS_LABEL.match(v):
            raise ValueError(
                f"{v!r} is not a DNS label: lowercase letters, digits and '-', starting with a letter, at most 40 characters"
            )
        return v

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
    def endpoint(self) -> str:
        return self.networking.endpoint or f"/{self.name}"

    @property
    def target_in_flight(self) -> float:
        return self.autoscaling.target_in_flight or float(self.serving.max_concurrency)


