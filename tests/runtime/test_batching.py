"""Dynamic batching over real HTTP: order, batch-scoped failures, wrong-length results."""

import concurrent.futures as cf
import threading
import time

import httpx
import pytest


@pytest.fixture(scope="module")
def batched(tmp_path_factory):
    from conftest import ServerProcess

    server = ServerProcess(["serve", "tests/runtime/apis/batched"], tmp_path_factory.mktemp("batched"))
    server.wait_ready()
    yield server
    server.stop()


def send_all(server, payloads, url=None):
    """Send every payload at once from its own thread (a barrier lines the threads up first)."""
    barrier = threading.Barrier(len(payloads))

    def send(p):
        barrier.wait(timeout=30)
        return httpx.post(url or f"{server.base}/batched", json=p, timeout=10)

    with cf.ThreadPoolExecutor(len(payloads)) as pool:
        return list(pool.map(send, payloads))


def test_each_caller_gets_its_own_result_in_batches(batched):
    # each batch takes 0.2 s: whatever arrives meanwhile queues and forms the next batch
    results = send_all(batched, [{"i": i, "sleep": 0.2} for i in range(24)])
    assert [r.status_code for r in results] == [200] * 24
    bodies = [r.json() for r in results]
    assert [b["i"] for b in bodies] == list(range(24))
    assert max(b["batch_size"] for b in bodies) > 1  # requests really were batched
    assert all(b["batch_size"] <= 8 for b in bodies)  # and never beyond max_batch_size
    metrics = httpx.get(f"{batched.base}/metrics").text
    assert 'myelin_batch_size_count{api="batched"}' in metrics


def test_an_exception_fails_exactly_its_batch(batched):
    results = send_all(batched, [{"i": i, "fail": i == 3} for i in range(6)])
    assert results[3].status_code == 500 and results[3].json()["error"]["type"] == "predictor_failure"
    # every request that succeeded came from a batch without the failing payload, and the
    # failed ones number exactly the size of the failing batch
    ok = [r.json() for r in results if r.status_code == 200]
    failed = [r for r in results if r.status_code != 200]
    assert all(r.status_code == 500 for r in failed)
    assert all(b["i"] != 3 for b in ok)
    assert len(failed) >= 1 and len(ok) + len(failed) == 6
    again = send_all(batched, [{"i": i} for i in range(4)])
    assert [r.status_code for r in again] == [200] * 4


def test_single_request_batches_alone(batched):
    r = httpx.post(f"{batched.base}/batched", json={"i": 7})
    assert r.json()["i"] == 7 and r.json()["batch_size"] == 1


def test_wrong_length_result_is_a_generic_500_with_the_details_in_the_log(batched):
    r = httpx.post(f"{batched.base}/batched", json={"i": 1, "short": True})
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["type"] == "predictor_failure" and "results for a batch" not in error["message"]
    assert error["request_id"] == r.headers["x-request-id"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and error["request_id"] not in batched.stdout():
        time.sleep(0.05)
    (logged,) = [line for line in batched.log_lines()
                 if line.get("request_id") == error["request_id"] and line.get("message") == "predict raised"]
    assert "predict returned 0 results for a batch of 1 payloads" in logged["error"]
    # the server is unharmed
    assert httpx.post(f"{batched.base}/batched", json={"i": 2}).status_code == 200


def test_a_per_item_error_fails_only_its_request(batched):
    results = send_all(batched, [{"i": i, "bad": i == 2, "sleep": 0.2} for i in range(8)])
    assert results[2].status_code == 422
    assert results[2].json()["error"] == {"type": "predictor_error", "message": "payload 2 is bad",
                                          "request_id": results[2].headers["x-request-id"]}
    others = [r for i, r in enumerate(results) if i != 2]
    assert [r.status_code for r in others] == [200] * 7
    # requests really were batched, so the error did not fail its batch-mates
    assert max(r.json()["batch_size"] for r in others) > 1


ASYNC_BATCHED = """import asyncio
class Predictor:
    def __init__(self, config):
        pass
    async def predict(self, payloads):
        await asyncio.sleep(max(p.get("sleep", 0) for p in payloads))
        return [{"i": p["i"], "batch_size": len(payloads)} for p in payloads]
"""


def test_async_predict_forms_real_batches(tmp_path, start_server):
    api = tmp_path / "async-batched"
    api.mkdir()
    (api / "api.yaml").write_text("name: async-batched\nserving:\n  max_concurrency: 16\n  timeout: 10s\n"
                                  "batching:\n  max_batch_size: 8\n  max_batch_delay: 20ms\n")
    (api / "predictor.py").write_text(ASYNC_BATCHED)
    server = start_server("serve", str(api))
    url = f"{server.base}/async-batched"
    with cf.ThreadPoolExecutor(1) as pool:
        busy = pool.submit(httpx.post, url, json={"i": -1, "sleep": 1.5}, timeout=10)  # the predictor is busy ...
        deadline = time.monotonic() + 10
        while 'myelin_in_flight_requests{api="async-batched"} 1.0' not in httpx.get(f"{server.base}/metrics").text:
            assert time.monotonic() < deadline, "the busy request never started"
            time.sleep(0.02)
        # ... so five concurrent requests queue and run as one batch (one async batch at a time by default),
        # not as five batches of one started side by side on the event loop.
        five = send_all(server, [{"i": i} for i in range(5)], url)
        assert busy.result().json() == {"i": -1, "batch_size": 1}
    assert [r.json() for r in five] == [{"i": i, "batch_size": 5} for i in range(5)]
