"""Servers for the protocol tests: the examples under `myelin serve` and under `myelin local` (one local server
for the whole session, shared by the OpenAI and OIP tests), and the scripted test APIs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, ServerProcess

HERE = Path(__file__).resolve().parent
EXAMPLES = ("iris-classifier", "kmeans", "text-generator", "sentence-embedding")


def copy_example(name: str, root: Path, **config) -> Path:
    """An example API folder copied under `root` (text-generator unpaced, so the tests do not wait on it)."""
    folder = root / name
    shutil.copytree(ROOT / "apis" / name, folder, ignore=shutil.ignore_patterns("__pycache__", "model"))
    if config:
        spec = yaml.safe_load((folder / "api.yaml").read_text())
        spec["predictor"]["config"].update(config)
        (folder / "api.yaml").write_text(yaml.safe_dump(spec))
    return folder


def scripted_api(name: str, root: Path, state_dir: Path, class_name: str = "Predictor", **overrides) -> Path:
    """A scripted test API (tests/protocols/apis/<name>) under `root`, its state in `state_dir`."""
    folder = root / f"{name}-{class_name.lower()}"
    shutil.copytree(HERE / "apis" / name, folder)
    spec = yaml.safe_load((folder / "api.yaml").read_text())
    spec["predictor"]["config"]["state_dir"] = str(state_dir)
    spec["predictor"]["class_name"] = class_name
    for section, values in overrides.items():
        spec.setdefault(section, {}).update(values)
    (folder / "api.yaml").write_text(yaml.safe_dump(spec))
    state_dir.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def local_examples(tmp_path_factory):
    """`myelin local` serving the four protocol examples on one port."""
    root = tmp_path_factory.mktemp("local-apis")
    for name in EXAMPLES:
        copy_example(name, root / "apis", **({"tokens_per_second": 0} if name == "text-generator" else {}))
    server = ServerProcess(["local", str(root / "apis"), "--no-reload"], root)
    try:
        server.wait_ready(timeout=120)
        states = server.wait_settled(timeout=180)
        assert all(state == "ready" for state in states.values()), (states, server.stderr())
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def serve_example(tmp_path_factory):
    """serve_example(name) -> `myelin serve` of that example (one per name per module), stopped at the end."""
    servers: dict[str, ServerProcess] = {}

    def start(name: str) -> ServerProcess:
        if name not in servers:
            root = tmp_path_factory.mktemp(name)
            folder = copy_example(name, root, **({"tokens_per_second": 0} if name == "text-generator" else {}))
            server = ServerProcess(["serve", str(folder)], root)
            servers[name] = server
            server.wait_ready(timeout=120)
        return servers[name]

    yield start
    for server in servers.values():
        server.stop()
