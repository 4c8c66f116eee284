"""`myelin local` watches each API's local `predictor.model_uri` folder (issue 24, gap 2): new model files reload
the API as an edit of its code does; before, changing apis/wine-classifier/model/weights.json reloaded nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

PREDICTOR = """import json
from pathlib import Path


class Predictor:
    def __init__(self, config, model_dir):
        self.weights = json.loads((Path(model_dir) / "weights.json").read_text())

    def predict(self, payload):
        return self.weights
"""


def _api(root: Path, name: str, model_uri: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "api.yaml").write_text(f"name: {name}\npredictor:\n  model_uri: {model_uri}\n")
    (folder / "predictor.py").write_text(PREDICTOR)
    return folder


def _answers(base: str, name: str, expected: dict, within: float = 60.0) -> dict:
    """Poll until the API answers `expected` (a reload takes a moment); the last answer otherwise."""
    deadline = time.monotonic() + within
    answer: dict = {}
    while time.monotonic() < deadline:
        r = httpx.post(f"{base}/{name}", json={}, timeout=10)
        if r.status_code == 200:
            answer = r.json()
            if answer == expected:
                break
        time.sleep(0.2)
    return answer


def test_a_model_file_change_reloads_the_api(tmp_path, start_server):
    apis = tmp_path / "apis"
    inside = _api(apis, "inside", "model")  # the model folder inside the API folder, as wine-classifier's
    (inside / "model").mkdir()
    (inside / "model" / "weights.json").write_text(json.dumps({"w": 1}))
    shared = tmp_path / "shared-model"  # a model folder outside the APIs folder
    shared.mkdir()
    (shared / "weights.json").write_text(json.dumps({"w": "a"}))
    _api(apis, "outside", str(shared))
    server = start_server("local", str(apis))
    assert _answers(server.base, "inside", {"w": 1}) == {"w": 1}
    assert _answers(server.base, "outside", {"w": "a"}) == {"w": "a"}

    (inside / "model" / "weights.json").write_text(json.dumps({"w": 2}))
    assert _answers(server.base, "inside", {"w": 2}) == {"w": 2}, server.stdout()[-3000:]
    (shared / "weights.json").write_text(json.dumps({"w": "b"}))
    assert _answers(server.base, "outside", {"w": "b"}) == {"w": "b"}, server.stdout()[-3000:]

    versions = {a["name"]: a["version"] for a in httpx.get(f"{server.base}/info").json()["apis"]}
    assert versions == {"inside": 2, "outside": 2}  # one reload each: the other API was not touched
