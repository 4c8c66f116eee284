"""`kind: RealtimeAPI`: one HTTP request, one prediction."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from .fields import ApiBase, AutoscalingSpec, BatchingSpec
from .protocols import OipSpec, OpenAISpec, protocol_sections
from .rollout import RolloutSpec


class ApiSpec(ApiBase):
    """`kind: RealtimeAPI`: each request is answered with its prediction (or a stream of items, for a `predict` that
    yields). `api.yaml` needs only a `name`; everything else has a default."""

    kind: Literal["RealtimeAPI"] = Field("RealtimeAPI", description="`RealtimeAPI` (may be left out).")
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    batching: BatchingSpec | None = None
    oip: OipSpec | None = Field(None, description="The tensors served over the Open Inference Protocol (protocol oip).")
    openai: OpenAISpec | None = Field(None, description="The OpenAI-compatible routes served (protocol openai).")

    @field_validator("oip")
    @classmethod
    def _oip(cls, v: OipSpec | None, info: ValidationInfo) -> OipSpec | None:
        networking = info.data.get("networking")
        if networking is not None:  # else networking itself is invalid, and reported
            protocol_sections("oip", networking.protocols, v)
        return v

    @field_validator("openai")
    @classmethod
    def _openai(cls, v: OpenAISpec | None, info: ValidationInfo) -> OpenAISpec | None:
        networking = info.data.get("networking")
        if networking is not None:
            protocol_sections("openai", networking.protocols, v)
        return v

    @property
    def openai_routes(self) -> list[str]:
        """The OpenAI routes served: `openai.routes`, or chat and completions by default; none without openai."""
        if "openai" not in self.networking.protocols:
            return []
        return list(self.openai.routes) if self.openai is not None else ["chat", "completions"]

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


