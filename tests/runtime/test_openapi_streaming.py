"""/docs (OpenAPI) says a streaming API answers NDJSON or Server-Sent Events (issue 24, gap 5): a `predict` that
yields was documented as a plain 200 prediction."""

from __future__ import annotations

from pathlib import Path

import httpx

from conftest import ROOT
from myelin.openapi_doc import paths, streams
from myelin.spec import load_api_spec

STREAMING = """class Predictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        for word in str(payload).split():
            yield {"token": word}
"""
ASYNC_STREAMING = STREAMING.replace("    def predict", "    async def predict")
PLAIN_WITH_NESTED_YIELD = """class Predictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        def words():
            yield from str(payload).split()
        return {"words": list(words())}
"""


def _api(root: Path, name: str, predictor: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "api.yaml").write_text(f"name: {name}\n")
    (folder / "predictor.py").write_text(predictor)
    return folder


def _post(folder: Path, name: str) -> dict:
    return paths(load_api_spec(folder), folder, f"/{name}")[f"/{name}"]["post"]


def test_a_generator_predict_is_documented_as_a_stream(tmp_path):
    for name, source in (("gen", STREAMING), ("agen", ASYNC_STREAMING)):
        op = _post(_api(tmp_path, name, source), name)
        ok = op["responses"]["200"]
        assert set(ok["content"]) == {"application/x-ndjson", "text/event-stream"}, name
        assert "Accept" in ok["description"] and "stream" in op["summary"]
        assert {"400", "500", "503", "504"} <= set(op["responses"])


def test_a_plain_predict_stays_a_prediction(tmp_path):
    """A yield inside a function nested in predict does not make predict a generator."""
    folder = _api(tmp_path, "plain", PLAIN_WITH_NESTED_YIELD)
    assert not streams(load_api_spec(folder), folder)
    assert "content" not in _post(folder, "plain")["responses"]["200"]


def test_the_text_generator_example_is_documented_as_a_stream():
    folder = ROOT / "apis" / "text-generator"
    assert streams(load_api_spec(folder), folder)


def test_myelin_local_and_serve_document_the_stream(tmp_path, start_server):
    _api(tmp_path / "apis", "gen", STREAMING)
    local = start_server("local", str(tmp_path / "apis"))
    doc = httpx.get(f"{local.base}/openapi.json").json()
    assert "application/x-ndjson" in doc["paths"]["/gen"]["post"]["responses"]["200"]["content"]
    serve = start_server("serve", str(tmp_path / "apis" / "gen"))
    doc = httpx.get(f"{serve.base}/openapi.json").json()
    assert "text/event-stream" in doc["paths"]["/gen"]["post"]["responses"]["200"]["content"]
