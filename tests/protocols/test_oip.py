"""The Open Inference Protocol v2 over the examples and scripted APIs, checked by real clients:
`tritonclient.http` in its default binary mode and in JSON mode, and the protocol's JSON Schemas
(oip_schema.py, written from the specification) for every answer read with plain HTTP."""

from __future__ import annotations

import json
import threading
import time

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from conftest import ServerProcess

from . import oip_schema as schema
from .conftest import scripted_api

POINTS = np.array([[-2.5, 7.3], [1.0, 2.0], [3.0, 4.0], [-8.0, 0.5]], dtype=np.float32)
FLOWERS = {"sepal_length": [5.1, 6.7, 6.3], "sepal_width": [3.5, 3.0, 3.3],
           "petal_length": [1.4, 5.2, 6.0], "petal_width": [0.2, 2.3, 2.5]}


def client(server: ServerProcess) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.base.removeprefix("http://"))


def native(server: ServerProcess, endpoint: str, payload: dict) -> dict:
    response = httpx.post(server.base + endpoint, json=payload, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def kmeans_inputs(binary: bool, points: np.ndarray = POINTS) -> list:
    features = triton.InferInput("features", list(points.shape), "FP32")
    features.set_data_from_numpy(points, binary_data=binary)
    return [features]


def iris_inputs(binary: bool) -> list:
    inputs = []
    for name, values in FLOWERS.items():
        tensor = triton.InferInput(name, [len(values)], "FP32")
        tensor.set_data_from_numpy(np.array(values, dtype=np.float32), binary_data=binary)
        inputs.append(tensor)
    return inputs


@pytest.fixture(params=["serve", "local"])
def kmeans_server(request, serve_example, local_examples):
    return serve_example("kmeans") if request.param == "serve" else local_examples


@pytest.fixture(params=["serve", "local"])
def iris_server(request, serve_example, local_examples):
    return serve_example("iris-classifier") if request.param == "serve" else local_examples


# ------------------------------------------------------------------------------------------- the examples
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_kmeans_over_oip_gives_the_native_answers(kmeans_server, binary):
    c = client(kmeans_server)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("kmeans")
    assert c.is_model_ready("kmeans", "1")
    metadata = c.get_model_metadata("kmeans")
    assert metadata["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 2]}]
    assert metadata["outputs"] == [{"name": "cluster", "datatype": "INT64", "shape": [-1]}]
    want = [native(kmeans_server, "/kmeans", {"features": [float(v) for v in row]})["cluster"] for row in POINTS]
    # The client's default: binary inputs, every output as binary (binary_data_output).
    result = c.infer("kmeans", kmeans_inputs(binary), request_id="req-7")
    assert result.as_numpy("cluster").tolist() == want
    assert result.get_response()["id"] == "req-7" and result.get_response()["model_name"] == "kmeans"
    assert result.get_response()["outputs"][0]["parameters"] == {"binary_data_size": 8 * len(POINTS)}
    # Outputs asked for by name, as JSON data, on the /versions/<v> route.
    result = c.infer("kmeans", kmeans_inputs(binary), model_version="1",
                     outputs=[triton.InferRequestedOutput("cluster", binary_data=False)])
    assert result.get_response()["outputs"][0]["data"] == want
    schema.check(schema.INFER_RESPONSE, result.get_response())


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_iris_over_oip_one_row_per_flower(iris_server, binary):
    c = client(iris_server)
    assert c.is_model_ready("iris-classifier")
    want = [native(iris_server, "/iris-classifier", {k: v[i] for k, v in FLOWERS.items()})["label"] for i in range(3)]
    labels = c.infer("iris-classifier", iris_inputs(binary)).as_numpy("label")  # BYTES as binary: bytes
    assert [v.decode() for v in labels.tolist()] == want == ["setosa", "virginica", "virginica"]
    out = [triton.InferRequestedOutput("label", binary_data=False)]
    assert c.infer("iris-classifier", iris_inputs(binary), outputs=out).get_response()["outputs"][0]["data"] == want


def test_answers_match_the_protocol_schema(kmeans_server):
    base = kmeans_server.base
    schema.check(schema.SERVER_METADATA, httpx.get(base + "/v2").json())
    assert httpx.get(base + "/v2").json()["extensions"] == ["binary_tensor_data"]
    schema.check(schema.SERVER_LIVE, httpx.get(base + "/v2/health/live").json())
    assert httpx.get(base + "/v2/health/ready").status_code == 200
    for path in ("/v2/models/kmeans", "/v2/models/kmeans/versions/1"):
        schema.check(schema.MODEL_METADATA, httpx.get(base + path).json())
    schema.check(schema.MODEL_READY, httpx.get(base + "/v2/models/kmeans/ready").json())
    request = {"id": "x", "inputs": [{"name": "features", "shape": [2, 2], "datatype": "FP32",
                                      "data": [[1, 2], [3, 4]]}]}  # nested data, integers for FP32: both allowed
    answer = httpx.post(base + "/v2/models/kmeans/infer", json=request)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    schema.check(schema.INFER_RESPONSE, answer.json())
    assert answer.json()["outputs"][0]["shape"] == [2]
    assert answer.headers["x-request-id"]


BAD = [
    ({"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}, "dimension 1 is 3"),
    ({"inputs": [{"name": "features", "shape": [1, 2], "datatype": "INT32", "data": [1, 2]}]}, "datatype 'INT32'"),
    ({"inputs": [{"name": "features", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}]}, "3 elements"),
    ({"inputs": [{"name": "features", "shape": [1, 2], "datatype": "FP32", "data": ["a", "b"]}]}, "JSON numbers"),
    ({"inputs": [{"name": "points", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}, "no input 'points'"),
    ({"inputs": []}, "non-empty list"),
    ({"inputs": [{"name": "features", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}],
      "outputs": [{"name": "label"}]}, "no output 'label'"),
    ({"inputs": [{"name": "features", "shape": [0, 2], "datatype": "FP32", "data": []}]}, "rows) is 0"),
]


@pytest.mark.parametrize("request_body, message", BAD, ids=[m for _, m in BAD])
def test_requests_not_matching_the_declared_tensors_are_400(serve_example, request_body, message):
    server = serve_example("kmeans")
    answer = httpx.post(server.base + "/v2/models/kmeans/infer", json=request_body)
    assert answer.status_code == 400, answer.text
    schema.check(schema.ERROR, answer.json())
    assert message in answer.json()["error"]


def test_binary_extension_errors_and_routes(serve_example):
    server = serve_example("kmeans")
    c = client(server)
    with pytest.raises(InferenceServerException) as err:  # the client's own binary request, one dimension wrong
        c.infer("kmeans", kmeans_inputs(True, np.zeros((2, 3), dtype=np.float32)))
    assert err.value.status() == "400" and "dimension 1 is 3" in err.value.message()
    header = json.dumps({"inputs": [{"name": "features", "shape": [1, 2], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 8}}]}).encode()
    url = server.base + "/v2/models/kmeans/infer"
    short = httpx.post(url, content=header + b"\0" * 4, headers={"inference-header-content-length": str(len(header))})
    assert short.status_code == 400 and "binary_data_size 8 runs past" in short.json()["error"]
    extra = httpx.post(url, content=header + b"\0" * 12, headers={"inference-header-content-length": str(len(header))})
    assert extra.status_code == 400 and "belong to no input" in extra.json()["error"]
    ok = httpx.post(url, content=header + np.array([[-2.5, 7.3]], dtype="<f4").tobytes(),
                    headers={"inference-header-content-length": str(len(header))})
    assert ok.status_code == 200 and ok.json()["outputs"][0]["data"] == [
        native(server, "/kmeans", {"features": [-2.5, 7.3]})["cluster"]]
    with pytest.raises(InferenceServerException) as err:
        c.infer("kmeans", kmeans_inputs(True), model_version="2")
    assert err.value.status() == "404" and "no version '2'" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        c.get_model_metadata("nope")
    assert err.value.status() == "404"
    assert httpx.get(url).status_code == 405 and httpx.get(url).headers["allow"] == "POST"


def test_local_answers_the_server_routes_for_every_api(local_examples):
    c = client(local_examples)
    assert c.is_server_live() and c.is_server_ready()
    assert c.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    for name in ("kmeans", "iris-classifier"):
        assert c.is_model_ready(name)
        schema.check(schema.MODEL_METADATA, c.get_model_metadata(name))
    # An API that does not speak oip is no OIP model: 404 in the protocol's shape, from the router.
    answer = httpx.get(local_examples.base + "/v2/models/text-generator")
    assert answer.status_code == 404
    schema.check(schema.ERROR, answer.json())
    assert httpx.get(local_examples.base + "/v2/health/nope").status_code == 404


# ------------------------------------------------------------------------------------------- batching
def test_rows_of_concurrent_requests_share_one_batch(tmp_path):
    """A batched API gets the rows of queued requests side by side in one predict(list) call, and each request
    its own rows back, in order (the first call is held until two more requests are queued behind it)."""
    state = tmp_path / "state"
    folder = scripted_api("rows", tmp_path, state)
    server = ServerProcess(["serve", str(folder)], tmp_path)
    try:
        server.wait_ready()
        results: dict[str, object] = {}

        def infer(key: str, x: np.ndarray, words: list[str], binary: bool) -> None:
            c = client(server)
            a = triton.InferInput("x", list(x.shape), "INT32")
            a.set_data_from_numpy(x, binary_data=binary)
            b = triton.InferInput("word", [len(words)], "BYTES")
            b.set_data_from_numpy(np.array(words, dtype=object), binary_data=binary)
            results[key] = c.infer("rows", [a, b])

        first = threading.Thread(target=infer, args=("first", np.array([[0, 0]], dtype=np.int32), ["zero"], True))
        first.start()
        deadline = time.monotonic() + 20
        while not (state / "running").exists():
            assert time.monotonic() < deadline, server.stderr()
            time.sleep(0.01)
        x3 = np.arange(6, dtype=np.int32).reshape(3, 2)
        threads = [threading.Thread(target=infer, args=("three", x3, ["a", "bé", "c"], True)),
                   threading.Thread(target=infer, args=("two", x3[:2] + 10, ["d", "e"], False))]
        for t in threads:
            t.start()
        while "myelin_queue_length{api=\"rows\"} 2.0" not in httpx.get(server.base + "/metrics").text:
            assert time.monotonic() < deadline, "the two requests were not queued"
            time.sleep(0.01)
        (state / "go").write_text("1")
        for t in (first, *threads):
            t.join(30)
        assert results["first"].as_numpy("batch").tolist() == [1]
        three, two = results["three"], results["two"]
        assert three.as_numpy("batch").tolist() == [5, 5, 5] and two.as_numpy("batch").tolist() == [5, 5]
        assert three.as_numpy("double").tolist() == (2 * x3).tolist()
        assert two.as_numpy("double").tolist() == (2 * (x3[:2] + 10)).tolist()
        assert [w.decode() for w in three.as_numpy("word").tolist()] == ["a", "bé", "c"]
        assert [w.decode() for w in two.as_numpy("word").tolist()] == ["d", "e"]
        assert 'myelin_batch_size_sum{api="rows"} 6.0' in httpx.get(server.base + "/metrics").text
        # The native route is not served: this API lists only oip.
        assert httpx.post(server.base + "/rows", json={}).status_code == 404
    finally:
        server.stop()


def test_api_keys_on_oip_routes(tmp_path):
    state = tmp_path / "state"
    (state).mkdir()
    (state / "go").write_text("1")
    folder = scripted_api("rows", tmp_path, state, networking={"auth": {"api_keys_env": "ROWS_KEYS"}})
    server = ServerProcess(["serve", str(folder)], tmp_path, env={"ROWS_KEYS": "k1,k2"})
    try:
        server.wait_ready()
        c = client(server)
        with pytest.raises(InferenceServerException) as err:
            c.get_model_metadata("rows")
        assert err.value.status() == "401"
        assert c.get_model_metadata("rows", headers={"Authorization": "Bearer k2"})["name"] == "rows"
        assert c.is_server_live()  # the server-wide routes are open, as /healthz is
    finally:
        server.stop()


def test_more_rows_than_max_batch_size_run_in_parts(serve_example):
    """kmeans batches at most 64: a request of 150 rows runs as 64 + 64 + 22, each row's answer the native one."""
    server = serve_example("kmeans")
    points = np.random.default_rng(3).uniform(-10, 10, size=(150, 2)).astype(np.float32)
    got = client(server).infer("kmeans", kmeans_inputs(True, points)).as_numpy("cluster").tolist()
    want = [native(server, "/kmeans", {"features": [float(v) for v in row]})["cluster"] for row in points]
    assert got == want
