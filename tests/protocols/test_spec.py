"""`networking.protocols` and the `oip`/`openai` sections: refused at load and by `myelin validate`, naming
the file, the field and the reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from myelin.loader import LoadError, import_predictor_class
from myelin.spec import SpecError, check_unique, load_api_spec, spec_from_dict

TENSORS = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
           "outputs": [{"name": "y", "datatype": "INT64", "shape": [-1]}]}

REFUSED = [
    ({"networking": {"protocols": ["myelin", "grpc"]}}, "networking.protocols", "unknown protocol 'grpc'"),
    ({"networking": {"protocols": []}}, "networking.protocols", "at least one protocol"),
    ({"networking": {"protocols": ["oip", "oip"]}, "oip": TENSORS}, "networking.protocols", "listed twice"),
    ({"networking": {"protocols": ["oip"]}}, "oip", "declare the model's tensors"),
    ({"oip": TENSORS}, "oip", "does not list oip"),
    ({"openai": {"routes": ["chat"]}}, "openai", "does not list openai"),
    ({"networking": {"protocols": ["openai"]}, "openai": {"routes": ["embeddings", "chat"]}}, "openai.routes",
     "either embeddings, or chat and completions"),
    ({"networking": {"protocols": ["openai"]}, "openai": {"routes": ["images"]}}, "openai.routes[0]", "Input should be"),
    ({"networking": {"protocols": ["oip"]}, "oip": {**TENSORS, "inputs": [{"name": "x", "datatype": "FP33",
                                                                          "shape": [-1]}]}},
     "oip.inputs[0].datatype", "Input should be"),
    ({"networking": {"protocols": ["oip"]}, "oip": {**TENSORS, "inputs": [{"name": "x", "datatype": "FP32",
                                                                          "shape": [4]}]}},
     "oip.inputs[0].shape", "the first dimension is the rows"),
    ({"networking": {"protocols": ["oip"]}, "oip": {**TENSORS, "outputs": TENSORS["outputs"] * 2}}, "oip",
     "declared twice"),
    ({"networking": {"endpoint": "/v2/models/x"}}, "networking.endpoint", "reserved for the Open Inference Protocol"),
    ({"networking": {"endpoint": "/v2"}}, "networking.endpoint", "reserved"),
    ({"kind": "AsyncAPI", "networking": {"protocols": ["myelin", "openai"]}}, "networking",
     "kind AsyncAPI speaks only myelin"),
]


@pytest.mark.parametrize("fields, field, reason", REFUSED, ids=[r for _, _, r in REFUSED])
def test_refused_naming_file_field_and_reason(fields, field, reason):
    with pytest.raises(SpecError) as err:
        spec_from_dict({"name": "demo", **fields}, "apis/demo/api.yaml")
    assert f"apis/demo/api.yaml: {field}: " in str(err.value) and reason in str(err.value)


def test_defaults_and_accepted():
    assert spec_from_dict({"name": "demo"}, "x").networking.protocols == ["myelin"]
    spec = spec_from_dict({"name": "demo", "networking": {"protocols": ["openai", "oip"]}, "oip": TENSORS}, "x")
    assert spec.openai_routes == ["chat", "completions"] and spec.oip.version == "1"
    assert spec_from_dict({"name": "demo"}, "x").openai_routes == []


def test_an_endpoint_under_another_apis_openai_routes_is_refused(tmp_path):
    a = spec_from_dict({"name": "a", "networking": {"protocols": ["openai"]}}, "a")
    b = spec_from_dict({"name": "b", "networking": {"endpoint": "/a/v1/models"}}, "b")
    with pytest.raises(SpecError, match=r"/a/v1/models lies under /a/v1/, the OpenAI-compatible routes"):
        check_unique({tmp_path / "a": a, tmp_path / "b": b})


GENERATOR = "class Predictor:\n    def __init__(self, config):\n        pass\n\n    def predict(self, payload):\n" \
            "        yield payload\n"


def _api(root: Path, name: str, spec: dict) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "predictor.py").write_text(GENERATOR)
    (folder / "api.yaml").write_text(yaml.safe_dump({"name": name, **spec}))
    return folder


CANNOT_SERVE = [
    ({"networking": {"protocols": ["myelin", "openai"]}, "openai": {"routes": ["embeddings"]}},
     "openai.routes lists embeddings: an embedding is one vector per input, so predict must return it"),
    ({"networking": {"protocols": ["myelin", "oip"]}, "oip": TENSORS},
     "networking.protocols lists oip: an Open Inference Protocol request answers each row with one result"),
]


@pytest.mark.parametrize("spec, reason", CANNOT_SERVE, ids=["embeddings", "oip"])
def test_a_predictor_that_cannot_serve_the_protocol_is_refused_at_load_and_by_validate(tmp_path, spec, reason):
    folder = _api(tmp_path, "gen", spec)
    with pytest.raises(LoadError) as err:
        import_predictor_class(folder, load_api_spec(folder))
    assert reason in str(err.value) and str(folder / "api.yaml") in str(err.value)
    assert f"{folder.resolve() / 'predictor.py'}, line 5" in err.value.where  # the predict that cannot serve it
    validate = subprocess.run([sys.executable, "-m", "myelin.cli", "validate", str(folder)], capture_output=True,
                              text=True, cwd=ROOT)
    assert validate.returncode == 1 and reason in validate.stdout
    # A generator serves chat and completions.
    ok = _api(tmp_path, "chat", {"networking": {"protocols": ["openai"]}})
    import_predictor_class(ok, load_api_spec(ok))


def test_validate_names_a_bad_protocol_value(tmp_path):
    folder = _api(tmp_path, "bad", {"networking": {"protocols": ["myelin", "grpc"]}})
    validate = subprocess.run([sys.executable, "-m", "myelin.cli", "validate", str(folder)], capture_output=True,
                              text=True, cwd=ROOT)
    assert validate.returncode == 1
    assert f"{folder / 'api.yaml'}: networking.protocols: unknown protocol 'grpc': use myelin, openai, oip" \
        in validate.stdout


def test_examples_validate_with_their_routes():
    validate = subprocess.run([sys.executable, "-m", "myelin.cli", "validate", "apis"], capture_output=True,
                              text=True, cwd=ROOT)
    assert validate.returncode == 0, validate.stdout
    assert "OIP /v2/models/kmeans" in validate.stdout and "OIP /v2/models/iris-classifier" in validate.stdout
    assert "OpenAI /text-generator/v1 (chat, completions)" in validate.stdout
    assert "OpenAI /sentence-embedding/v1 (embeddings)" in validate.stdout
