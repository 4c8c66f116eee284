"""The API contract: `api.yaml` parsed into one strict, typed spec per API.

Both halves of Myelin read APIs through this package: the runtime (server limits, batching,
predictor loading) and the infrastructure (`components/` builds Deployments, autoscalers and
ingresses from the same object). It stays free of runtime-only and infrastructure-only imports.

- `fields`: field types (durations, quantities) and the sections every kind shares;
- one module per kind (`realtime`, `asyncapi`, `splitter`), registered in `load.KINDS` by its `kind` value;
- `load`: reading files (and `MYELIN_API_SPEC`) into specs, with errors naming file and field.
"""

from .asyncapi import AsyncApiSpec, JobsSpec, QueueAutoscalingSpec
from .fields import (
    ApiBase,
    AuthSpec,
    AutoscalingSpec,
    BatchingSpec,
    ComputeSpec,
    Duration,
    EgressRule,
    NetworkingSpec,
    PredictorSpec,
    ServingSpec,
    SpecError,
    UpdateStrategySpec,
    parse_cpu,
    parse_duration,
    parse_memory,
)
from .load import (
    KINDS,
    SPEC_FILE,
    check_predictor_file,
    check_unique,
    deep_merge,
    discover_api_folders,
    load_api_spec,
    load_specs,
    misnamed_spec,
    read_spec_file,
    resolve_spec,
    spec_from_dict,
    validation_problems,
)
from .model_uri import ModelUri, S3Scope, parse_model_uri, s3_scope
from .realtime import ApiSpec
from .rollout import AnalysisSpec, CanaryStep, RolloutSpec
from .splitter import SplitTarget, TrafficSplitterSpec, check_splitters, is_splitter, splitter_problems

__all__ = [
    "ApiBase", "ApiSpec", "AsyncApiSpec", "JobsSpec", "QueueAutoscalingSpec", "AuthSpec", "AutoscalingSpec", "BatchingSpec", "ComputeSpec", "Duration", "EgressRule", "KINDS", "ModelUri",
    "S3Scope", "parse_model_uri", "s3_scope",
    "NetworkingSpec", "PredictorSpec", "SPEC_FILE", "ServingSpec", "SpecError", "UpdateStrategySpec",
    "check_predictor_file", "check_unique", "deep_merge", "discover_api_folders", "load_api_spec",
    "load_specs", "misnamed_spec", "parse_cpu", "parse_duration", "parse_memory", "read_spec_file", "resolve_spec",
    "spec_from_dict", "validation_problems",
    "AnalysisSpec", "CanaryStep", "RolloutSpec", "SplitTarget", "TrafficSplitterSpec", "check_splitters", "is_splitter", "splitter_problems",
]
