"""Field types and sections every API kind shares: durations, quantities, predictor, compute,
autoscaling, serving, batching, update strategy, networking; and `ApiBase`, the fields of every kind."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic_core import core_schema
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..contract import OIP_PREFIX, PROTOCOL_MYELIN, PROTOCOLS, RESERVED_PATHS, SCRAPE_INTERVAL_S
from .model_uri import parse_model_uri

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
_MEM = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_MEM_UNITS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}
_PERCENT_OR_INT = re.compile(r"^(\d+)%?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SpecError(ValueError):
    """A bad `api.yaml` (or a bad override of one): names the file and field."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {field}: {msg}" if field else f"{source}: {msg}" for field, msg in problems]
        super().__init__("\n".join(lines))


def parse_duration(value: str) -> float:
    """'30s' -> 30.0, '5m' -> 300.0, '10ms' -> 0.01, '7d' -> 604800.0. Bare numbers are refused: units are explicit."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"durations are strings with a unit (ms, s, m, h, d), like '30s'; got {value!r}")
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"invalid duration {value!r}: write a number and a unit (ms, s, m, h, d), like '30s' or '5m'")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_cpu(value: str) -> float:
    """Kubernetes CPU quantity -> cores: '500m' -> 0.5, '2' -> 2.0."""
    match = _CPU.match(str(value))
    if not match:
        raise ValueError(f"invalid cpu quantity {value!r}: use cores ('1', '2.5') or millicores ('500m')")
    number = float(match.group(1))
    return number / 1000 if match.group(2) else number


def parse_memory(value: str) -> int:
    """Kubernetes memory quantity -> bytes: '2Gi' -> 2147483648."""
    match = _MEM.match(str(value))
    if not match:
        raise ValueError(f"invalid memory quantity {value!r}: use e.g. '512Mi', '2Gi' or '1G'")
    return int(float(match.group(1)) * _MEM_UNITS[match.group(2)])


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class Duration(str):
    """A duration kept as written ('30s') with `.seconds` for code."""

    @property
    def seconds(self) -> float:
        return parse_duration(self)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            _duration,
            serialization=core_schema.plain_serializer_function_ser_schema(str),
            json_schema_input_schema=core_schema.str_schema(),
        )


def _duration(value: Any) -> Duration:
    parse_duration(value)
    return Duration(value.strip())


class PredictorSpec(_Strict):
    """The `Predictor` class: where it is, what it is handed, where its model files come from."""

    path: str = Field("predictor.py", description="File in the API folder defining the class.")
    class_name: str = Field("Predictor", description="Class to load from `path`.")
    config: dict[str, Any] = Field(default_factory=dict, description="Mapping passed to `__init__(self, config)`.")
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables set before the predictor is imported.")
    model_uri: str | None = Field(
        None,
        description="Model files handed to `__init__` as `model_dir`: `s3://bucket/key` (one object, or the prefix "
        "`key/` when no such object exists), `s3://bucket/prefix/`, `s3://bucket/key?versionId=V` (that version of one "
        "object), or a local path (relative to the API folder; a file means its folder). See Models from S3.",
    )

    @field_validator("model_uri")
    @classmethod
    def _model_uri(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parse_model_uri(v)
        return v.strip()

    @field_validator("path")
    @classmethod
    def _relative_py(cls, v: str) -> str:
        p = Path(v)
        if p.is_absolute() or ".." in p.parts or p.suffix != ".py":
            raise ValueError(f"must be a .py file inside the API folder, got {v!r}")
        return v

    @field_validator("class_name")
    @classmethod
    def _identifier(cls, v: str) -> str:
        if not v.isidentifier():
            raise ValueError(f"must be a Python class name, got {v!r}")
        return v

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not _ENV_NAME.match(name):
                raise ValueError(f"invalid environment variable name {name!r}")
        return v


class ComputeSpec(_Strict):
    """What one replica requests: CPU, memory, GPUs and, for a model from S3, the disk for its cache."""

    cpu: str = Field("1", description="CPU request per replica (Kubernetes quantity).")
    mem: str = Field("1Gi", description="Memory request and limit per replica (Kubernetes quantity).")
    gpu: int = Field(0, ge=0, le=16, description="NVIDIA GPUs per replica (GPU node pool, GPU image).")
    model_disk: str | None = Field(
        None, description="In the cloud, the size of the pod's own volume for the model cache (quantity, at least "
        "`1Mi`): **required** with an `s3://` `model_uri` (the deploy stops without it), at most the ephemeral storage "
        "of the node pool (90% of its `disk_size_gib` less the OS and images: see Scale to zero), and at least the "
        "model's size plus 5% (`pulumi up` checks); ignored with a local `model_uri` and by `myelin local`. In the "
        "cloud an `s3://` `model_uri` is for `kind: RealtimeAPI` (an AsyncAPI with one is refused by the stack config: "
        "its workers get no model role yet). See Models from S3.",
    )

    @field_validator("cpu", mode="before")
    @classmethod
    def _cpu(cls, v: Any) -> str:
        if isinstance(v, bool):
            raise ValueError("must be a CPU quantity like '1' or '500m'")
        v = str(v)
        if parse_cpu(v) <= 0:
            raise ValueError("must be greater than zero")
        return v

    @field_validator("mem", mode="before")
    @classmethod
    def _mem(cls, v: Any) -> str:
        if isinstance(v, bool):
            raise ValueError("must be a memory quantity like '2Gi'")
        v = str(v)
        if parse_memory(v) < 32 * 2**20:
            raise ValueError("must be at least 32Mi")
        return v

    @field_validator("model_disk", mode="before")
    @classmethod
    def _model_disk(cls, v: Any) -> str | None:
        if v is None:
            return v
        if isinstance(v, bool):
            raise ValueError("must be a size like '20Gi'")
        v = str(v)
        if parse_memory(v) < 2**20:
            raise ValueError("must be at least 1Mi")
        return v

    @property
    def model_disk_bytes(self) -> int | None:
        return parse_memory(self.model_disk) if self.model_disk is not None else None

    @property
    def cpu_cores(self) -> float:
        return parse_cpu(self.cpu)

    @property
    def mem_bytes(self) -> int:
        return parse_memory(self.mem)


class AutoscalingSpec(_Strict):
    """Replicas scaled on in-flight requests (KEDA in the cluster): Cortex's autoscaling knobs and defaults, mapped
    onto HPA behavior."""

    min_replicas: int = Field(1, ge=0, le=1000, description="Floor; `0` scales the API to zero when idle (its first "
                              "request is held while it starts: see Scale to zero).")
    max_replicas: int = Field(100, ge=1, le=1000, description="Ceiling.")
    init_replicas: int | None = Field(
        None, ge=0, le=1000,
        description="Replicas at first deploy (default `min_replicas`, at least 1); validated (min ≤ init ≤ max), but "
        "not yet applied in the cluster: a new Deployment starts with 1 pod and KEDA raises it to `min_replicas` within "
        "seconds (setting `replicas` on the Deployment would fight the autoscaler on every update).")
    target_in_flight: float | None = Field(
        None, gt=0, description="In-flight requests (running + queued) per replica to aim for; defaults to "
        "`serving.max_concurrency`."
    )
    window: Duration = Field(Duration("60s"), description="Averaging window of the in-flight metric; at least `30s` "
                             "(two 15 s scrapes: a shorter window can be empty, reads as 0 and the API never scales).")
    upscale_stabilization: Duration = Field(
        Duration("1m"), description="How long a higher recommendation must hold before scaling up.")
    downscale_stabilization: Duration = Field(
        Duration("5m"), description="How long before scaling down; with `min_replicas: 0`, how long without requests "
        "before the API goes to zero (at most 60m in the cloud, the HPA's limit).")
    max_upscale_factor: float = Field(1.5, gt=1.0, le=100.0,
                                      description="Most replicas can grow by per step (× current).")
    max_downscale_factor: float = Field(0.75, gt=0.0, lt=1.0,
                                        description="Most replicas can shrink to per step (× current).")

    @model_validator(mode="after")
    def _ordering(self) -> "AutoscalingSpec":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is greater than max_replicas ({self.max_replicas})")
        if self.init_replicas is not None and not (self.min_replicas <= self.init_replicas <= self.max_replicas):
            raise ValueError(
                f"init_replicas ({self.init_replicas}) must lie between min_replicas ({self.min_replicas}) "
                f"and max_replicas ({self.max_replicas})"
            )
        if self.window.seconds < 2 * SCRAPE_INTERVAL_S:
            raise ValueError(
                f"window must be at least {2 * SCRAPE_INTERVAL_S}s, two scrapes of the in-flight metric (Prometheus "
                f"scrapes every {SCRAPE_INTERVAL_S}s): a window holding fewer samples can be empty, reads as 0 and the "
                "API never scales up")
        return self

    @property
    def initial_replicas(self) -> int:
        return self.init_replicas if self.init_replicas is not None else max(1, self.min_replicas)


class ServingSpec(_Strict):
    """Per-replica server limits. With `processes > 1` the limits are split evenly across processes."""

    max_concurrency: int = Field(1, ge=1, le=10000, description="Requests running at once per replica (with "
                                 "batching: requests inside running batches; must be ≥ `max_batch_size`).")
    max_queue_length: int = Field(100, ge=0, le=100000, description="Requests waiting per replica beyond that; "
                                  "more get 503 + `Retry-After`, on their headers, before their body is read (a request is "
                                  "admitted, and counts in flight, from then until its answer is written and its predict has "
                                  "returned).")
    timeout: Duration = Field(Duration("60s"), description="Deadline per request from "
                             "arrival, queueing included; past it, 504. For a stream: the time to its first item, and then the "
                             "longest gap between two items.")
    processes: int = Field(1, ge=1, le=64, description="Server processes per "
                           "replica, each with its own predictor, sharing the port; the limits above are split across them.")
    threads: int = Field(1, ge=1, le=1000, description="Threads per process running a sync "
                         "`predict`, or the steps of a sync generator `predict` (with batching: up to this many batches in "
                         "parallel).")
    max_body_size: str = Field("10Mi", description="Largest request body; larger gets 413 "
                               "without being read.")
    drain_timeout: Duration = Field(Duration("30s"), description="On SIGTERM (or SIGHUP), how long "
                                   "in-flight requests may take before the process exits (streams still running then end with an error "
                                   "event).")
    stuck_timeout: Duration = Field(
        Duration("5m"),
        description="How long every prediction slot may stay held by predicts running past `serving.timeout` before "
        "`/healthz` fails and the container is restarted.",
    )
    max_stream_duration: Duration | None = Field(
        None, description="The longest a streaming prediction may run in total (off by default; `timeout` bounds each "
        "item: see Streaming)."
    )

    @field_validator("max_body_size", mode="before")
    @classmethod
    def _body(cls, v: Any) -> str:
        v = str(v)
        if parse_memory(v) < 1:
            raise ValueError("must be at least 1 byte")
        return v

    @property
    def max_body_bytes(self) -> int:
        return parse_memory(self.max_body_size)

    def per_process(self, value: int, processes: int | None = None) -> int:
        """Split a per-replica limit across processes (each process keeps at least 1 where the limit is >= 1)."""
        return math.ceil(value / (processes or self.processes)) if value else 0


class BatchingSpec(_Strict):
    """Dynamic batching (off unless set): `predict` receives a list of payloads and returns a list of results."""

    max_batch_size: int = Field(..., ge=1, le=100000, description="Most payloads per `predict(list)` call.")
    max_batch_delay: Duration = Field(
        Duration("5ms"), description="Once the predictor is free, how long a partial batch waits for more."
    )
    max_concurrent_batches: int | None = Field(
        None, ge=1, le=10000,
        description="Batches running at once per process: default 1 for an `async def predict`; a sync `predict` "
        "runs at most `serving.threads` (one per thread), which this can lower.",
    )


class UpdateStrategySpec(_Strict):
    """The Deployment's rolling update in the cloud (`rollout.strategy: rolling`)."""

    max_surge: int | str = Field("25%", description="Extra pods during a rolling update (count or percent).")
    max_unavailable: int | str = Field(0, description="Pods that may be down during an update (count or percent; 0: zero-downtime).")

    @field_validator("max_surge", "max_unavailable", mode="before")
    @classmethod
    def _int_or_percent(cls, v: Any) -> int | str:
        if isinstance(v, bool):
            raise ValueError("must be a count or a percentage like '25%'")
        if isinstance(v, int):
            if v < 0:
                raise ValueError("must not be negative")
            return v
        match = _PERCENT_OR_INT.match(str(v).strip())
        if not match:
            raise ValueError(f"must be a count or a percentage like '25%', got {v!r}")
        s = str(v).strip()
        return s if s.endswith("%") else int(s)

    @model_validator(mode="after")
    def _not_both_zero(self) -> "UpdateStrategySpec":
        if str(self.max_surge) in ("0", "0%") and str(self.max_unavailable) in ("0", "0%"):
            raise ValueError("max_surge and max_unavailable cannot both be zero: the rollout could never progress")
        return self


class AuthSpec(_Strict):
    """API keys (off unless set): requests without a valid key get 401, checked before anything else."""

    api_keys_env: str = Field(
        ...,
        description="Environment variable holding the accepted API keys (comma-separated); requests need "
        "`x-api-key: <key>` or `Authorization: Bearer <key>`, else 401. In the cloud it is filled from a Kubernetes "
        "Secret (see the stack's `api_keys`).",
    )
    header: str = Field("x-api-key", description="Request header carrying the key (or `Authorization: Bearer`).")

    @field_validator("api_keys_env")
    @classmethod
    def _env(cls, v: str) -> str:
        if not _ENV_NAME.match(v):
            raise ValueError(f"invalid environment variable name {v!r}")
        return v

    @field_validator("header")
    @classmethod
    def _header(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9-]+$", v):
            raise ValueError(f"invalid header name {v!r}")
        return v.lower()


class EgressRule(_Strict):
    """A destination the API's pods may open connections to (in the cluster everything else is denied)."""

    cidr: str = Field(..., description="Destination network, e.g. 10.0.0.0/8 or 0.0.0.0/0.")
    ports: list[int] = Field(..., min_length=1, description="TCP ports, e.g. [443].")

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, v: str) -> str:
        import ipaddress

        try:
            return str(ipaddress.ip_network(v, strict=True))
        except ValueError as err:
            raise ValueError(f"not a CIDR block: {err}") from None

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: list[int]) -> list[int]:
        for port in v:
            if isinstance(port, bool) or not 1 <= port <= 65535:
                raise ValueError(f"{port!r} is not a TCP port (1-65535)")
        return v


class NetworkingSpec(_Strict):
    """Where the API answers, who may call it, and where it may connect to."""

    endpoint: str | None = Field(None, description="Public path, the same locally and in the cloud; defaults to `/<name>`.")
    visibility: Literal["public", "internal"] = Field(
        "public", description="`public` (internet-facing load balancer) or `internal` (VPC only).")
    auth: AuthSpec | None = None
    egress: list[EgressRule] = Field(
        default_factory=list,
        description="In the cluster, where the API's pods may connect: a list of `{cidr, ports}` (TCP), e.g. "
        "`[{cidr: 10.0.0.0/8, ports: [5432]}]`; DNS is always allowed (and HTTPS, port 443, for an API with an "
        "`s3://` `model_uri`: S3 and STS), everything else is denied.",
    )
    protocols: list[str] = Field(
        default_factory=lambda: [PROTOCOL_MYELIN],
        description="The protocols the API speaks: myelin (POST <endpoint>), openai (<endpoint>/v1/...), oip (Open "
        "Inference Protocol v2 under /v2/models/<name>).",
    )

    @field_validator("protocols")
    @classmethod
    def _protocols(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError(f"list at least one protocol: {', '.join(PROTOCOLS)} (default [{PROTOCOL_MYELIN}])")
        for name in v:
            if name not in PROTOCOLS:
                raise ValueError(f"unknown protocol {name!r}: use {', '.join(PROTOCOLS)}")
        if len(set(v)) != len(v):
            raise ValueError(f"a protocol is listed twice: {v}")
        return v

    @field_validator("endpoint")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not re.match(r"^/[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*$", v):
            raise ValueError(f"must be a path like '/my-api' (letters, digits, '-', '_', '.', '/'), got {v!r}")
        if any(part in (".", "..") for part in v.split("/")):
            # Clients remove dot segments before sending (RFC 3986 5.2.4): such an endpoint is never reached as
            # written, and `/x/../healthz` would be the server's own route.
            raise ValueError(f"must not contain '.' or '..' segments, got {v!r}")
        if v in RESERVED_PATHS:
            raise ValueError(f"{v} is reserved for the server's own routes")
        if v.startswith(OIP_PREFIX + "/"):
            raise ValueError(f"{v} is under {OIP_PREFIX}/, reserved for the Open Inference Protocol's routes")
        return v




class ApiBase(_Strict):
    """What every kind has: a name, the predictor, compute, serving limits, rollouts and networking.

    Each kind's model (`realtime.ApiSpec`, `asyncapi.AsyncApiSpec`) adds its `kind` literal and the
    sections that differ (autoscaling, batching, jobs).
    """

    name: str = Field(..., description="DNS label (lowercase, digits, `-`, at most 40 characters); names the API "
                      "and its Kubernetes objects.")
    kind: str = Field(..., description="`RealtimeAPI` (the default), `AsyncAPI` or `TrafficSplitter`.")
    predictor: PredictorSpec = Field(default_factory=PredictorSpec)
    compute: ComputeSpec = Field(default_factory=ComputeSpec)
    serving: ServingSpec = Field(default_factory=ServingSpec)
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

    @property
    def endpoint(self) -> str:
        return self.networking.endpoint or f"/{self.name}"
