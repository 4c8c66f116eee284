"""ApiSpec: strict parsing, defaults, and errors that name the file and field."""

import re
from pathlib import Path

import pytest

from myelin.spec import (
    ApiSpec,
    SpecError,
    deep_merge,
    load_api_spec,
    parse_cpu,
    parse_duration,
    parse_memory,
    spec_from_dict,
)


def write_api(tmp_path: Path, text: str, predictor: bool = True) -> Path:
    folder = tmp_path / "api"
    folder.mkdir(exist_ok=True)
    (folder / "api.yaml").write_text(text)
    if predictor:
        (folder / "predictor.py").write_text("class Predictor:\n    def __init__(self, c): pass\n    def predict(self, p): return p\n")
    return folder


def test_defaults_follow_cortex():
    spec = spec_from_dict({"name": "iris"}, "api.yaml")
    assert spec.kind == "RealtimeAPI"
    assert spec.predictor.path == "predictor.py" and spec.predictor.class_name == "Predictor"
    assert spec.compute.gpu == 0
    a = spec.autoscaling
    assert (a.min_replicas, a.max_replicas, a.initial_replicas) == (1, 100, 1)
    assert a.window.seconds == 60 and a.upscale_stabilization.seconds == 60 and a.downscale_stabilization.seconds == 300
    assert (a.max_upscale_factor, a.max_downscale_factor) == (1.5, 0.75)
    assert spec.target_in_flight == spec.serving.max_concurrency == 1
    assert spec.serving.max_queue_length == 100
    assert spec.batching is None
    assert spec.endpoint == "/iris"
    assert spec.networking.visibility == "public"
    assert spec.update_strategy.max_unavailable == 0
    assert spec.serving.max_stream_duration is None  # streams are bounded per item (serving.timeout) only


def test_streaming_and_batching_fields():
    spec = spec_from_dict({"name": "gen", "serving": {"max_stream_duration": "10m", "max_concurrency": 8},
                           "batching": {"max_batch_size": 8, "max_concurrent_batches": 2}}, "api.yaml")
    assert spec.serving.max_stream_duration.seconds == 600 and spec.batching.max_concurrent_batches == 2
    assert spec_from_dict({"name": "b", "serving": {"max_concurrency": 8}, "batching": {"max_batch_size": 8}},
                          "api.yaml").batching.max_concurrent_batches is None  # the default depends on the call kind
    assert ApiSpec.model_validate_json(spec.model_dump_json()) == spec


def test_units():
    assert parse_duration("30s") == 30 and parse_duration("5m") == 300 and parse_duration("10ms") == 0.01
    assert parse_duration("1.5h") == 5400
    assert parse_cpu("500m") == 0.5 and parse_cpu("2") == 2
    assert parse_memory("2Gi") == 2 * 2**30 and parse_memory("1G") == 10**9 and parse_memory("512Mi") == 512 * 2**20
    for bad in ("30", "s", "5 minutes", "-1s"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    with pytest.raises(ValueError):
        parse_duration(30)


@pytest.mark.parametrize(
    "data, field, words",
    [
        ({"name": "Iris"}, "name", "DNS label"),
        ({"name": "iris", "colour": "red"}, "colour", "unknown field"),
        ({"name": "iris", "serving": {"timeout": 5}}, "serving.timeout", "unit"),
        ({"name": "iris", "serving": {"max_concurrency": 0}}, "serving.max_concurrency", "greater than or equal to 1"),
        ({"name": "iris", "compute": {"cpu": "lots"}}, "compute.cpu", "invalid cpu"),
        ({"name": "iris", "compute": {"mem": "2GB"}}, "compute.mem", "invalid memory"),
        ({"name": "iris", "autoscaling": {"min_replicas": 5, "max_replicas": 2}}, "autoscaling", "greater than max_replicas"),
        ({"name": "iris", "autoscaling": {"max_downscale_factor": 1.5}}, "autoscaling.max_downscale_factor", "less than 1"),
        ({"name": "iris", "batching": {"max_batch_delay": "1ms"}}, "batching.max_batch_size", "required"),
        ({"name": "iris", "batching": {"max_batch_size": 8}}, "", "at least max_batch_size"),
        ({"name": "iris", "networking": {"endpoint": "/healthz"}}, "networking.endpoint", "reserved"),
        ({"name": "iris", "networking": {"visibility": "private"}}, "networking.visibility", "public"),
        ({"name": "iris", "kind": "BatchAPI"}, "kind", "RealtimeAPI"),
        ({"name": "iris", "update_strategy": {"max_surge": 0, "max_unavailable": "0%"}}, "update_strategy", "both be zero"),
        ({"name": "iris", "predictor": {"path": "../evil.py"}}, "predictor.path", "inside the API folder"),
        ({"name": "iris", "serving": {"max_stream_duration": 60}}, "serving.max_stream_duration", "unit"),
        ({"name": "iris", "serving": {"max_concurrency": 8}, "batching": {"max_batch_size": 8, "max_concurrent_batches": 0}},
         "batching.max_concurrent_batches", "greater than or equal to 1"),
    ],
)
def test_errors_name_file_and_field(data, field, words):
    with pytest.raises(SpecError) as info:
        spec_from_dict(data, "apis/iris/api.yaml")
    message = str(info.value)
    assert (f"apis/iris/api.yaml: {field}:" if field else "apis/iris/api.yaml: ") in message, message
    assert words in message


def test_all_problems_reported_at_once():
    with pytest.raises(SpecError) as info:
        spec_from_dict({"name": "iris", "foo": 1, "serving": {"processes": 0}}, "x/api.yaml")
    fields = {field for field, _ in info.value.problems}
    assert fields == {"foo", "serving.processes"}


def test_load_from_folder(tmp_path):
    folder = write_api(tmp_path, "name: demo\nserving:\n  max_concurrency: 4\nbatching:\n  max_batch_size: 4\n  max_batch_delay: 2ms\n")
    spec = load_api_spec(folder)
    assert spec.batching.max_batch_size == 4 and spec.batching.max_batch_delay.seconds == 0.002


def test_yaml_errors_have_line_numbers(tmp_path):
    folder = write_api(tmp_path, "name: demo\nserving: [unclosed\n")
    with pytest.raises(SpecError) as info:
        load_api_spec(folder)
    assert str(folder / "api.yaml") in str(info.value) and "line" in str(info.value)


def test_empty_and_missing(tmp_path):
    folder = write_api(tmp_path, "")
    with pytest.raises(SpecError, match="empty"):
        load_api_spec(folder)
    with pytest.raises(SpecError, match="not found"):
        load_api_spec(tmp_path / "nowhere")


def test_missing_predictor_file(tmp_path):
    folder = write_api(tmp_path, "name: demo\n", predictor=False)
    with pytest.raises(SpecError, match="predictor.path: file not found"):
        load_api_spec(folder)


def test_overrides_merge_and_name_their_source(tmp_path):
    folder = write_api(tmp_path, "name: demo\nautoscaling:\n  max_replicas: 10\n")
    spec = load_api_spec(folder, {"autoscaling": {"min_replicas": 3}}, "Pulumi.prod.yaml")
    assert (spec.autoscaling.min_replicas, spec.autoscaling.max_replicas) == (3, 10)
    with pytest.raises(SpecError) as info:
        load_api_spec(folder, {"autoscaling": {"min_replicas": 30}}, "Pulumi.prod.yaml")
    assert "Pulumi.prod.yaml" in str(info.value) and "autoscaling" in str(info.value)


def test_deep_merge_does_not_mutate():
    base = {"a": {"b": 1, "c": 2}}
    merged = deep_merge(base, {"a": {"b": 5}})
    assert merged == {"a": {"b": 5, "c": 2}} and base == {"a": {"b": 1, "c": 2}}


def test_spec_round_trips_through_json():
    spec = spec_from_dict({"name": "demo", "serving": {"timeout": "2s", "max_concurrency": 3},
                           "batching": {"max_batch_size": 3}}, "x")
    again = ApiSpec.model_validate_json(spec.model_dump_json())
    assert again == spec and again.serving.timeout.seconds == 2


def test_autoscaling_window_holds_two_scrapes():
    from myelin.spec import SpecError, spec_from_dict

    with pytest.raises(SpecError) as err:
        spec_from_dict({"name": "x", "autoscaling": {"window": "20s"}}, "apis/x/api.yaml")
    message = str(err.value)
    assert "apis/x/api.yaml: autoscaling: " in message and "at least 30s" in message and "never scales" in message
    assert spec_from_dict({"name": "x", "autoscaling": {"window": "30s"}}, "s").autoscaling.window.seconds == 30


def test_egress_rules_are_validated():
    from myelin.spec import SpecError, spec_from_dict

    spec = spec_from_dict({"name": "x", "networking": {"egress": [{"cidr": "10.0.0.0/8", "ports": [443, 5432]}]}}, "s")
    assert spec.networking.egress[0].cidr == "10.0.0.0/8" and spec.networking.egress[0].ports == [443, 5432]
    for bad, field in (({"cidr": "10.0.0.1/8", "ports": [443]}, "networking.egress[0].cidr"),
                       ({"cidr": "10.0.0.0/8", "ports": [70000]}, "networking.egress[0].ports"),
                       ({"cidr": "10.0.0.0/8", "ports": []}, "networking.egress[0].ports")):
        with pytest.raises(SpecError, match=re.escape(field)):
            spec_from_dict({"name": "x", "networking": {"egress": [bad]}}, "s")
