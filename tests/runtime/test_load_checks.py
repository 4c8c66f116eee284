"""A predictor the runtime could not call is refused at load and by `myelin validate`, naming file, line and
the accepted parameters; so is a streaming predictor with batching. How many batches run at once."""

from __future__ import annotations

import subprocess
import sys

import pytest

from myelin.invoke import max_concurrent_batches
from myelin.loader import CallKind, LoadError, Predictor, import_predictor_class
from myelin.spec import load_api_spec, spec_from_dict

PREDICT_SHAPE = "predict(self, payload[, query_params][, headers])"

REFUSED = {
    "predict-params": (
        "",
        "class Predictor:\n    def __init__(self, config):\n        pass\n\n"
        "    def predict(self, payload, params):\n        return payload\n",
        "predictor.py, line 5",
        ["Predictor.predict(self, payload, params) cannot be called", "missing a required argument: 'params'",
         PREDICT_SHAPE],
    ),
    "predict-no-payload": (
        "",
        "class Predictor:\n    def __init__(self, config):\n        pass\n\n    def predict(self):\n        return 1\n",
        "predictor.py, line 5",
        ["Predictor.predict(self) cannot be called", PREDICT_SHAPE],
    ),
    "init-without-config": (
        "",
        "class Predictor:\n    def __init__(self):\n        pass\n\n    def predict(self, payload):\n        return payload\n",
        "predictor.py, line 2",
        ["Predictor.__init__(self) cannot be called", "accepted: __init__(self, config[, model_dir])"],
    ),
    "init-extra-required": (
        "",
        "class Predictor:\n    def __init__(self, config, model):\n        pass\n\n"
        "    def predict(self, payload):\n        return payload\n",
        "predictor.py, line 2",
        ["missing a required argument: 'model'", "accepted: __init__(self, config[, model_dir])"],
    ),
    "stream-batched": (
        "serving:\n  max_concurrency: 8\nbatching:\n  max_batch_size: 8\n",
        "class Predictor:\n    def __init__(self, config):\n        pass\n\n"
        "    def predict(self, payloads):\n        yield from payloads\n",
        "predictor.py, line 5",
        ["Predictor.predict is a generator (it streams its results)", "api.yaml sets `batching`",
         "streaming and batching do not combine"],
    ),
    "async-stream-batched": (
        "serving:\n  max_concurrency: 8\nbatching:\n  max_batch_size: 8\n",
        "class Predictor:\n    def __init__(self, config):\n        pass\n\n"
        "    async def predict(self, payloads):\n        for p in payloads:\n            yield p\n",
        "predictor.py, line 5",
        ["Predictor.predict is a generator", "api.yaml sets `batching`", "do not combine"],
    ),
}


def make_api(root, name, extra_yaml, source):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "api.yaml").write_text(f"name: {name}\n{extra_yaml}")
    (folder / "predictor.py").write_text(source)
    return folder


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_validate_names_the_file_line_and_accepted_parameters(tmp_path, name):
    extra, source, where, words = REFUSED[name]
    folder = make_api(tmp_path, name, extra, source)
    out = subprocess.run([sys.executable, "-m", "myelin.cli", "validate", str(folder)], capture_output=True, text=True)
    assert out.returncode == 1, out.stdout
    assert f"✗ {name}: {folder / 'predictor.py'}" in out.stdout and where in out.stdout, out.stdout
    for word in words:
        assert word in out.stdout, (word, out.stdout)


@pytest.mark.parametrize("name", ["predict-params", "init-without-config", "stream-batched"])
def test_serve_refuses_to_load_it(tmp_path, start_server, name):
    """`myelin serve` exits 1 naming the file, line and accepted parameters (a crash loop with the reason)."""
    extra, source, where, words = REFUSED[name]
    server = start_server("serve", str(make_api(tmp_path, name, extra, source)), wait=False)
    line = server.load_failure()
    assert where in line and words[-1] in line, line
    assert any(entry.get("message") == "predictor failed to load" and where in entry["where"]
               for entry in server.log_lines())


ACCEPTED = [
    "def predict(self, payload):",
    "def predict(self, p, query_params, headers):",
    "def predict(self, payload, query_params=None, *, headers, debug=False):",
    "def predict(self, payload, **kwargs):",
    "def predict(self, *args):",
    "@staticmethod\n    def predict(payload, headers):",
    "async def predict(self, payload, headers):",
]


@pytest.mark.parametrize("head", ACCEPTED)
def test_every_shape_the_runtime_can_call_is_accepted(tmp_path, head):
    folder = make_api(tmp_path, "fine", "", "class Predictor:\n    def __init__(self, config, cache=None):\n"
                      f"        pass\n\n    {head}\n        return 1\n")
    assert import_predictor_class(folder, load_api_spec(folder)).__name__ == "Predictor"


def test_a_class_without_init_is_refused_with_the_shape(tmp_path):
    folder = make_api(tmp_path, "noinit", "", "class Predictor:\n    def predict(self, payload):\n        return 1\n")
    with pytest.raises(LoadError, match=r"has no __init__ method: define __init__\(self, config\[, model_dir\]\)"):
        import_predictor_class(folder, load_api_spec(folder))


def _predictor(kind: CallKind) -> Predictor:
    return Predictor(instance=None, predict=None, kind=kind, wants_query_params=False, wants_headers=False)


def test_how_many_batches_run_at_once():
    def spec(**batching):
        return spec_from_dict({"name": "b", "serving": {"max_concurrency": 64, "threads": 4},
                               "batching": {"max_batch_size": 8, **batching}}, "test")

    sync, async_ = _predictor(CallKind.SYNC), _predictor(CallKind.ASYNC)
    assert max_concurrent_batches(spec(), async_) == 1  # async: one batch at a time unless configured
    assert max_concurrent_batches(spec(max_concurrent_batches=3), async_) == 3
    assert max_concurrent_batches(spec(), sync) == 4  # sync: one per thread
    assert max_concurrent_batches(spec(max_concurrent_batches=2), sync) == 2
    assert max_concurrent_batches(spec(max_concurrent_batches=9), sync) == 4  # never more than the threads
