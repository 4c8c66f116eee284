"""`rollout:` of a RealtimeAPI: how a new version reaches its clients in the cloud.

`strategy: rolling` (the default) is the Deployment's rolling update (`update_strategy`). `strategy: canary` makes
the API's workload an Argo Rollout: the new version takes `weight` percent of the requests on the load balancer
for `pause` at each step, while an analysis reads the new version's own Myelin metrics (its 5xx ratio and p99
over `analysis.interval`, from its pods only) and aborts the release, sending every request back to the old
version, the moment one is over its threshold. Fewer than `min_requests` requests in an interval is inconclusive:
it never passes, and the release waits (paused) at its last step for a person to promote or abort it.

`myelin local` ignores `rollout`: a saved edit replaces the serving version once the new one is ready.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..contract import SCRAPE_INTERVAL_S
from .fields import Duration, _Strict

#: An analysis window holds at least this many scrapes (a rate over fewer can be empty or jumpy).
MIN_WINDOW_SCRAPES = 4


class CanaryStep(_Strict):
    weight: int = Field(..., ge=1, le=99, strict=True,
                        description="Percent of the API's requests the new version answers during this step.")
    pause: Duration | None = Field(
        None, description="How long the step lasts before the next; omitted: until `kubectl argo rollouts promote`.")


class AnalysisSpec(_Strict):
    max_error_ratio: float = Field(0.01, ge=0.0, le=1.0,
                                   description="Largest share of the new version's answers that may be 5xx.")
    max_p99_seconds: float = Field(1.0, gt=0.0, description="Largest p99 latency of the new version's answers.")
    min_requests: int = Field(50, ge=1, strict=True,
                              description="Fewest requests the new version must answer in an interval for the "
                                          "interval to count; fewer is inconclusive, never a pass.")
    interval: Duration = Field(Duration("1m"), description="How often the analysis measures, over that window.")

    @model_validator(mode="after")
    def _window(self) -> "AnalysisSpec":
        least = MIN_WINDOW_SCRAPES * SCRAPE_INTERVAL_S
        if self.interval.seconds < least:
            raise ValueError(f"interval must be at least {least}s ({MIN_WINDOW_SCRAPES} scrapes of the API's metrics, "
                             f"every {SCRAPE_INTERVAL_S}s): a shorter window can hold too few samples to measure")
        if self.interval.seconds != int(self.interval.seconds):
            raise ValueError("interval must be a whole number of seconds")
        return self


class RolloutSpec(_Strict):
    strategy: Literal["rolling", "canary"] = Field(
        "rolling", description="rolling: the Deployment's rolling update; canary: weighted steps with analysis.")
    steps: list[CanaryStep] = Field(default_factory=list, description="The canary's weights, in order.")
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)

    @model_validator(mode="after")
    def _steps(self) -> "RolloutSpec":
        if self.strategy == "rolling":
            if self.steps:
                raise ValueError("steps: only for strategy canary (strategy rolling is the Deployment's rolling "
                                 "update, set with update_strategy)")
            return self
        if not self.steps:
            raise ValueError("steps: strategy canary needs at least one step, like [{weight: 10, pause: 5m}]")
        weights = [s.weight for s in self.steps]
        if weights != sorted(set(weights)):
            raise ValueError(f"steps: the weights must increase from step to step, got {weights}")
        return self

    @property
    def canary(self) -> bool:
        return self.strategy == "canary"
