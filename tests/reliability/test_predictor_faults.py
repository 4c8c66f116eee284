"""One bad predictor must never wedge, blind or knock over a replica (issue 9, items 1-5).

Each test runs a real `myelin serve` on 127.0.0.1 over tests/reliability/apis/faulty* and counts outcomes.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import re
import time

import httpx
import pytest

from .helpers import APIS, Tally

SYNC_FAULTS = ("stopiteration", "generatorexit", "keyboardinterrupt", "systemexit", "custom", "cancelled")
ASYNC_FAULTS = ("stopiteration", "stopasynciteration", "keyboardinterrupt", "systemexit", "custom", "cancelled")


def _metric(text: str, name: str, api: str) -> float:
    match = re.search(rf'^{name}{{api="{api}"}} (\S+)$', text, re.M)
    assert match, f"{name} for {api} not in /metrics"
    return float(match.group(1))


def _assert_json_500(r: httpx.Response, mode: str) -> None:
    assert r.status_code == 500, (mode, r.status_code, r.text)
    assert r.headers["content-type"] == "application/json", (mode, r.headers)
    err = r.json()["error"]
    assert err["type"] == "predictor_failure" and err["request_id"] == r.headers["x-request-id"], (mode, err)


@pytest.mark.parametrize("api, faults", [("faulty", SYNC_FAULTS), ("faulty-async", ASYNC_FAULTS)])
def test_any_exception_a_predictor_raises_is_a_json_500_and_frees_its_slot(start_server, api, faults):
    server = start_server("serve", str(APIS / api))
    url = f"{server.base}/{api}"
    tally = Tally()
    with httpx.Client(timeout=5) as http:
        for mode in faults:
            for _ in range(3):  # more than max_concurrency (2): a leaked slot would make the third one wait
                r = http.post(url, params={"mode": mode}, json={})
                tally.add(r.status_code)
                _assert_json_500(r, mode)
        after = [http.post(url, params={"mode": "ok"}, json={}).status_code for _ in range(4)]
        metrics = http.get(f"{server.base}/metrics").text
        ready = http.get(f"{server.base}/readyz").status_code
    assert server.proc.poll() is None, "the server died"
    print(tally.summary(f"{api} faults") + f", then ok={after}")
    assert after == [200] * 4 and ready == 200
    assert _metric(metrics, "myelin_in_flight_requests", api) == 0
    server.stop()
    logged = [line for line in server.log_lines() if line.get("message") == "predict raised"]
    assert len(logged) == 3 * len(faults) and all(line.get("traceback") for line in logged)


def test_a_batch_whose_predict_raises_stopiteration_fails_and_the_next_batch_runs(start_server):
    server = start_server("serve", str(APIS / "faulty-batched"))
    url = f"{server.base}/faulty-batched"
    with httpx.Client(timeout=5) as http:
        for mode in ("stopiteration", "systemexit", "stopiteration"):
            _assert_json_500(http.post(url, json={"mode": mode}), mode)
        after = [http.post(url, json={"mode": "ok"}).status_code for _ in range(3)]
    assert after == [200] * 3 and server.proc.poll() is None


def test_a_hung_predict_stays_counted_turns_readiness_off_and_then_liveness(start_server):
    """Both slots held by predicts past serving.timeout (1s): 504 to the clients, but the replica says so."""
    server = start_server("serve", str(APIS / "faulty"))
    url = f"{server.base}/faulty"
    hang_s = 6.0
    started = time.monotonic()
    with cf.ThreadPoolExecutor(2) as pool:
        hung = [pool.submit(httpx.post, url, params={"mode": "hang", "s": str(hang_s)}, json={}, timeout=10)
                for _ in range(2)]
        statuses = [f.result().status_code for f in hung]
    assert statuses == [504, 504]
    with httpx.Client(timeout=5) as http:
        metrics = http.get(f"{server.base}/metrics").text
        stuck = (_metric(metrics, "myelin_in_flight_requests", "faulty"), _metric(metrics, "myelin_stuck_predictions", "faulty"))
        ready_while_stuck = http.get(f"{server.base}/readyz")
        live_early = http.get(f"{server.base}/healthz").status_code
        while time.monotonic() - started < 4.5:  # past serving.stuck_timeout (3s) of being wedged
            time.sleep(0.1)
        live_late = http.get(f"{server.base}/healthz")
        while time.monotonic() - started < hang_s + 1.0:  # the hung predicts return
            time.sleep(0.1)
        deadline = time.monotonic() + 5
        while http.get(f"{server.base}/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        recovered = (http.get(f"{server.base}/readyz").status_code, http.get(f"{server.base}/healthz").status_code,
                     http.post(url, params={"mode": "ok"}, json={}).status_code)
        metrics = http.get(f"{server.base}/metrics").text
    print(f"\nhung predicts: 504s={statuses}, in_flight/stuck while hung={stuck}, readyz={ready_while_stuck.status_code},"
          f" healthz early={live_early} late={live_late.status_code}, after return (readyz, healthz, predict)={recovered}")
    assert stuck == (2, 2)
    assert ready_while_stuck.status_code == 503 and ready_while_stuck.json()["status"] == "stuck"
    assert live_early == 200
    assert live_late.status_code == 503 and "stuck" in live_late.json()["error"]["message"]
    assert recovered == (200, 200, 200)
    assert _metric(metrics, "myelin_stuck_predictions", "faulty") == 0
    assert _metric(metrics, "myelin_in_flight_requests", "faulty") == 0


def test_numpy_views_and_scalars_encode(start_server):
    server = start_server("serve", str(APIS / "faulty"))
    r = httpx.post(f"{server.base}/faulty", params={"mode": "views"}, json={}, timeout=5)
    assert r.status_code == 200, r.text
    assert r.json() == {"column": [1.0, 4.0], "transposed": [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]], "zero_d": 2.5,
                        "scalar": 0.5, "strided": [0, 3, 6, 9], "fortran": [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]],
                        "bool": True}


def test_nan_and_infinity_become_null_with_a_warning_in_the_log(start_server):
    server = start_server("serve", str(APIS / "faulty"))
    r = httpx.post(f"{server.base}/faulty", params={"mode": "nonfinite"}, json={}, timeout=5)
    assert r.status_code == 200 and r.json() == {"nan": None, "inf": None, "array": [1.0, None, None]}
    server.stop()
    (warning,) = [line for line in server.log_lines() if line.get("message", "").startswith("result has NaN")]
    assert warning["level"] == "warning" and warning["request_id"] == r.headers["x-request-id"]


def test_predictor_output_never_corrupts_the_request_log(start_server):
    """Predictors print from many threads (stdout and stderr, partial lines) and raise lone surrogates:
    stdout stays one JSON object per line, every request logged once; the prints go to stderr."""
    server = start_server("serve", str(APIS / "faulty"))
    url = f"{server.base}/faulty"
    n = 200
    with cf.ThreadPoolExecutor(8) as pool:
        modes = ["print" if i % 4 else "surrogate" for i in range(n)]
        statuses = list(pool.map(lambda m: httpx.post(url, params={"mode": m, "n": "30"}, json={}, timeout=10).status_code,
                                 modes))
    assert statuses.count(200) + statuses.count(503) + statuses.count(500) == n
    server.stop()
    lines = server.stdout().splitlines()
    bad = [line for line in lines if not _is_json_object(line)]
    requests = [json.loads(line) for line in lines if _is_json_object(line) and "status" in json.loads(line)]
    print(f"\npredictor output: {len(lines)} stdout lines, {len(bad)} not JSON, {len(requests)} request lines for "
          f"{n} requests; stderr has {server.stderr().count('predictor says')} predictor lines")
    assert not bad, bad[:3]
    assert len(requests) == n
    assert server.stderr().count("predictor says") >= statuses.count(200) * 10
    surrogate_errors = [json.loads(line) for line in lines if "predict raised" in line]
    assert surrogate_errors and all("bad text" in e["error"] for e in surrogate_errors)


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False
