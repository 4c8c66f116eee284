"""`kind: TrafficSplitter`: one endpoint whose requests are spread over other APIs by weight, and copied to at
most one shadow API whose answers are thrown away.

A splitter is routing, never a predictor: it has no predictor, compute or serving section. `myelin local`'s
router splits and mirrors (myelin/local/splitter.py); in the cloud the weights are the ALB's weighted forward
action and each API answers the splitter's path (MYELIN_ENDPOINT_ALIASES; components/apis/splitter.py) and, the
ALB being unable to copy a request, copies it to the shadow itself (MYELIN_SHADOW_TARGETS; myelin/shadow.py).
Each request keeps the limits, keys and metrics of the API it lands on.

What one file can check is checked by the model (integer weights summing to 100, at most one shadow, no API
named twice); what needs the other APIs (each name an API of the same tree, no splitter behind a splitter, no
AsyncAPI, no API scaled to zero) is `check_splitters`, with the file and the `apis[i].name` at fault.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import Field, StrictBool, StrictInt, field_validator, model_validator

from .fields import NetworkingSpec, SpecError, _DNS_LABEL, _Strict

KIND = "TrafficSplitter"
TOTAL_WEIGHT = 100


class SplitTarget(_Strict):
    """One entry of `apis`: a weighted destination (`weight`) or the shadow (`shadow: true`, no weight)."""

    name: str = Field(..., description="Name of an API in the same folder tree (a RealtimeAPI).")
    weight: StrictInt | None = Field(
        None, ge=0, le=TOTAL_WEIGHT,
        description="Share of the splitter's requests this API answers, in percent (integers summing to 100).")
    shadow: StrictBool = Field(
        False, description="Receives a copy of every request; its answers and errors are discarded.")

    @field_validator("name")
    @classmethod
    def _dns(cls, v: str) -> str:
        if not _DNS_LABEL.match(v):
            raise ValueError(f"{v!r} is not an API name (a DNS label)")
        return v

    @model_validator(mode="after")
    def _weight_or_shadow(self) -> "SplitTarget":
        if self.shadow and self.weight is not None:
            raise ValueError(f"{self.name}: a shadow has no weight (it gets a copy of every request, and its "
                             "answers are discarded); remove `weight` or `shadow`")
        if not self.shadow and self.weight is None:
            raise ValueError(f"{self.name}: needs a `weight` (an integer percentage), or `shadow: true`")
        return self


class SplitterNetworkingSpec(_Strict):
    """Where the splitter answers. No `auth` or `egress`: each request is checked with the keys of the API it
    lands on, and a splitter has no pods of its own."""

    endpoint: str | None = Field(None, description="Public path of the splitter; defaults to /<name>.")
    visibility: Literal["public", "internal"] = Field(
        "public", description="`public` (internet-facing load balancer) or `internal` (VPC only).")

    @model_validator(mode="before")
    @classmethod
    def _no_own_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("auth", "egress"):
                if key in data:
                    raise ValueError(f"{key}: not a field of a TrafficSplitter: a splitter has no pods of its own; "
                                     "each request is checked with the keys (networking.auth) of the API it lands on")
        return data

    @field_validator("endpoint")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        return NetworkingSpec._path(v)


class TrafficSplitterSpec(_Strict):
    """`kind: TrafficSplitter`: an endpoint that spreads its requests over other APIs of the same folder tree by
    weight, and copies each to at most one shadow API whose answers are thrown away. It has no predictor, compute or
    `networking.auth`: each request is checked with the keys of the API it lands on, and keeps that API's limits,
    deadline and log line. `myelin local` serves it; a stack deploys its weights on the ALB, and the APIs it weighs
    copy each request to the shadow (see Traffic splitting)."""

    kind: Literal["TrafficSplitter"] = Field(KIND, description="`TrafficSplitter`.")
    name: str = Field(..., description="DNS label naming the splitter.")
    networking: SplitterNetworkingSpec = Field(default_factory=SplitterNetworkingSpec)
    apis: list[SplitTarget] = Field(..., min_length=1, description="The APIs requests go to, and the shadow.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _DNS_LABEL.match(v):
            raise ValueError(
                f"{v!r} is not a DNS label: lowercase letters, digits and '-', starting with a letter, at most 40 "
                "characters")
        return v

    @model_validator(mode="after")
    def _weights(self) -> "TrafficSplitterSpec":
        seen: set[str] = set()
        for i, target in enumerate(self.apis):
            if target.name in seen:
                raise ValueError(f"apis[{i}].name: {target.name!r} is listed twice (an API is either weighted once "
                                 "or the shadow)")
            seen.add(target.name)
        shadows = [i for i, t in enumerate(self.apis) if t.shadow]
        if len(shadows) > 1:
            raise ValueError(f"apis[{shadows[1]}].shadow: at most one shadow per splitter (apis[{shadows[0]}] is "
                             "already the shadow)")
        weighted = [t for t in self.apis if not t.shadow]
        if not weighted:
            raise ValueError("apis: needs at least one API with a weight (the shadow's answers are never returned)")
        total = sum(t.weight or 0 for t in weighted)
        if total != TOTAL_WEIGHT:
            listed = " + ".join(f"{t.weight} ({t.name})" for t in weighted)
            raise ValueError(f"apis: the weights must sum to {TOTAL_WEIGHT}; {listed} = {total}")
        return self

    @property
    def endpoint(self) -> str:
        return self.networking.endpoint or f"/{self.name}"

    @property
    def weighted(self) -> list[SplitTarget]:
        return [t for t in self.apis if not t.shadow]

    @property
    def shadow(self) -> SplitTarget | None:
        return next((t for t in self.apis if t.shadow), None)


def is_splitter(spec: Any) -> bool:
    return getattr(spec, "kind", None) == KIND


def splitter_problems(splitter: TrafficSplitterSpec, others: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What is wrong with a splitter given the other APIs of its tree (name -> spec): (field, message) pairs."""
    problems: list[tuple[str, str]] = []
    kinds: dict[str, str] = {}
    for i, target in enumerate(splitter.apis):
        where = f"apis[{i}].name"
        spec = others.get(target.name)
        if target.name == splitter.name:
            problems.append((where, "a splitter cannot send requests to itself"))
            continue
        if spec is None:
            known = ", ".join(sorted(n for n, s in others.items() if not is_splitter(s))) or "none"
            problems.append((where, f"no API named {target.name!r} in this folder tree (APIs: {known})"))
            continue
        if is_splitter(spec):
            problems.append((where, f"{target.name!r} is a TrafficSplitter: a splitter points at APIs, not at "
                                    "another splitter (list that splitter's APIs here with combined weights)"))
            continue
        kinds[target.name] = spec.kind
        if spec.kind == "AsyncAPI":
            # Refused alone too: a job's status is kept by the API that took it, so GET <endpoint>/<id> would have
            # to reach that API, which a per-request weight cannot guarantee.
            problems.append((where, (
                f"{target.name!r} is an AsyncAPI: a splitter spreads RealtimeAPIs only (a job's status lives with "
                "the API that took the job, and a weighted route would send GET <endpoint>/<id> elsewhere)")))
            continue
        rollout = getattr(spec, "rollout", None)
        if rollout is not None and rollout.canary:
            problems.append((where, (
                f"{target.name!r} is released as a canary (rollout.strategy canary): its own Ingress weighs its old "
                "and new versions, which a splitter's weights would bypass; use strategy rolling for it")))
            continue
        if getattr(spec.autoscaling, "min_replicas", 1) == 0:
            why = ("a shadow receives a copy of every request, which would keep it awake (or wake it) for answers "
                   "nobody reads, each held by KEDA's interceptor meanwhile" if target.shadow else
                   "an API scaled to zero is reached through KEDA's interceptor, which the load balancer's weights "
                   "cannot split")
            problems.append((where, (
                f"{target.name!r} has autoscaling.min_replicas 0: {why}; set its min_replicas to 1 or more")))
    if len(set(kinds.values())) > 1:
        problems.append(("apis", "mixes AsyncAPIs and RealtimeAPIs"))
    return problems


def check_splitters(specs: Mapping[Path, Any], source_of: Mapping[Path, str] | None = None) -> dict[Path, SpecError]:
    """Every splitter among `specs` (folder -> spec) against the others: the splitters at fault, with their error."""
    by_name = {spec.name: spec for spec in specs.values()}
    bad: dict[Path, SpecError] = {}
    for folder, spec in specs.items():
        if not is_splitter(spec):
            continue
        problems = splitter_problems(spec, by_name)
        if problems:
            source = (source_of or {}).get(folder) or str(Path(folder) / "api.yaml")
            bad[folder] = SpecError(source, problems)
    return bad
