"""`kind: TrafficSplitter` (issue 22 item 1): the spec's errors name file and field; `myelin local` splits by
weight (a chi-square test over 2,000 requests) and mirrors the shadow, whose failures and slowness change no
client answer. Real servers on 127.0.0.1, stopped by pid."""

from __future__ import annotations

import concurrent.futures as cf
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from scipy.stats import chisquare

from myelin.spec import load_specs
from myelin.local.splitter import SEED_ENV

PREDICTOR = """
import os
import time


class Predictor:
    def __init__(self, config):
        self.config = config

    def predict(self, payload, query_params):
        log = os.environ.get("SEEN_LOG")
        if log:
            with open(log, "a") as f:
                f.write(str(payload.get("n")) + "\\n")
        if self.config.get("sleep"):
            time.sleep(float(self.config["sleep"]))
        if self.config.get("fail"):
            raise RuntimeError("the shadow fails on purpose")
        return {{"api": "{name}", "n": payload.get("n"), "path_seen": True}}
"""


def make_api(root: Path, name: str, extra: str = "") -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "api.yaml").write_text(f"name: {name}\n{extra}")
    (folder / "predictor.py").write_text(PREDICTOR.format(name=name))
    return folder


def make_splitter(root: Path, name: str, body: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "api.yaml").write_text(f"kind: TrafficSplitter\nname: {name}\n{body}")
    return folder


# -- the spec ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body, field, words", [
    ("apis:\n  - {name: a, weight: 60}\n  - {name: b, weight: 30}\n", "apis", "sum to 100; 60 (a) + 30 (b) = 90"),
    ("apis:\n  - {name: a, weight: 50}\n  - {name: nope, weight: 50}\n", "apis[1].name", "no API named 'nope'"),
    ("apis:\n  - {name: a, weight: 100}\n  - {name: inner, weight: 0}\n", "apis[1].name", "is a TrafficSplitter"),
    ("apis:\n  - {name: a, weight: 50}\n  - {name: jobs, weight: 50}\n", "apis[1].name", "is an AsyncAPI"),
    ("apis:\n  - {name: a, weight: 100}\n  - {name: b, shadow: true}\n  - {name: c, shadow: true}\n",
     "apis[2].shadow", "at most one shadow"),
    ("apis:\n  - {name: a, weight: 100}\n  - {name: cold, shadow: true}\n", "apis[1].name", "min_replicas 0"),
    ("apis:\n  - {name: a, weight: 50.5}\n  - {name: b, weight: 49.5}\n", "apis[0].weight", "integer"),
    ("apis:\n  - {name: a, weight: 100, shadow: true}\n", "apis[0]", "a shadow has no weight"),
    ("networking:\n  auth: {api_keys_env: KEYS}\napis:\n  - {name: a, weight: 100}\n", "networking",
     "keys (networking.auth) of the API it lands on"),
    ("apis:\n  - {name: a, weight: 100}\n  - {name: a, shadow: true}\n", "apis[1].name", "listed twice"),
])
def test_a_bad_splitter_is_refused_naming_file_and_field(tmp_path, body, field, words):
    root = tmp_path / "apis"
    for name in ("a", "b", "c"):
        make_api(root, name)
    make_api(root, "cold", "autoscaling:\n  min_replicas: 0\n")
    make_api(root, "jobs", "kind: AsyncAPI\n")
    make_splitter(root, "inner", "apis:\n  - {name: a, weight: 100}\n")
    make_splitter(root, "split", body)
    specs, errors = load_specs([str(root)])
    assert "split" not in {s.name for s in specs.values()}
    [error] = [e for e in errors if "/split/api.yaml" in e]
    assert f"{root / 'split' / 'api.yaml'}: {field}" in error, error
    assert words in error, error


def test_a_good_splitter_loads_and_validate_lists_it(tmp_path):
    root = tmp_path / "apis"
    make_api(root, "a")
    make_api(root, "b")
    make_splitter(root, "split", "networking:\n  endpoint: /predict\napis:\n  - {name: a, weight: 90}\n"
                                 "  - {name: b, weight: 10}\n")
    specs, errors = load_specs([str(root)])
    assert errors == []
    [split] = [s for s in specs.values() if s.kind == "TrafficSplitter"]
    assert split.endpoint == "/predict" and [(t.name, t.weight) for t in split.weighted] == [("a", 90), ("b", 10)]
    check = subprocess.run([sys.executable, "-m", "myelin.cli", "validate", str(root)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "/predict  (TrafficSplitter: a 90%, b 10%)" in check.stdout


# -- myelin local: the split ------------------------------------------------------------------------------------


def _post_many(url: str, count: int, workers: int = 8) -> list[httpx.Response]:
    with httpx.Client(timeout=60) as client, cf.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda n: client.post(url, json={"n": n}), range(count)))


def test_local_split_passes_a_chi_square_test_against_the_weights(start_server, tmp_path):
    """2,000 requests; the counts of each API's answers against 20/50/30 at the 1% level. The router's choice is
    seeded (MYELIN_LOCAL_SPLIT_SEED) so the run is reproducible: a wrong use of the weights still fails."""
    root = tmp_path / "apis"
    for name in ("red", "green", "blue"):
        make_api(root, name)
    make_splitter(root, "colours", "apis:\n  - {name: red, weight: 20}\n  - {name: green, weight: 50}\n"
                                   "  - {name: blue, weight: 30}\n")
    server = start_server("local", str(root), env={SEED_ENV: "22"})
    answers = _post_many(f"{server.base}/colours", 2000)
    assert {r.status_code for r in answers} == {200}
    seen = [r.json()["api"] for r in answers]
    counts = [seen.count(n) for n in ("red", "green", "blue")]
    expected = [2000 * w / 100 for w in (20, 50, 30)]
    stat, p = chisquare(counts, expected)
    print(f"\nsplit 20/50/30 over 2000 requests: {counts}, chi-square {stat:.2f}, p = {p:.3f}")
    assert p > 0.01, (counts, stat, p)
    # The path moved to each API's endpoint (their servers know only their own), and the split is in the metrics.
    assert all(r.json()["path_seen"] for r in answers)
    metrics = httpx.get(f"{server.base}/metrics").text
    for name, count in zip(("red", "green", "blue"), counts):
        assert f'myelin_split_requests_total{{api="{name}",splitter="colours"}} {float(count)}' in metrics
    info = next(a for a in httpx.get(f"{server.base}/info").json()["apis"] if a["name"] == "colours")
    assert info["state"] == "ready"
    assert [(a["name"], a["weight"], a["requests"]) for a in info["splits"]["apis"]] == [
        ("red", 20, counts[0]), ("green", 50, counts[1]), ("blue", 30, counts[2])]


def test_a_splitter_edit_reroutes_and_a_missing_api_answers_503(start_server, tmp_path):
    root = tmp_path / "apis"
    make_api(root, "one")
    make_api(root, "two")
    split = make_splitter(root, "split", "apis:\n  - {name: one, weight: 100}\n  - {name: two, weight: 0}\n")
    server = start_server("local", str(root))
    assert {r.json()["api"] for r in _post_many(f"{server.base}/split", 20)} == {"one"}
    (split / "api.yaml").write_text("kind: TrafficSplitter\nname: split\napis:\n  - {name: two, weight: 100}\n")
    deadline = time.monotonic() + 30
    while httpx.post(f"{server.base}/split", json={}).json().get("api") != "two":
        assert time.monotonic() < deadline, "the edited splitter never routed to two"
        time.sleep(0.1)
    # A bad edit is refused and the previous version keeps routing.
    (split / "api.yaml").write_text("kind: TrafficSplitter\nname: split\napis:\n  - {name: two, weight: 99}\n")
    deadline = time.monotonic() + 30
    while "refused" not in next(a for a in httpx.get(f"{server.base}/info").json()["apis"] if a["name"] == "split"):
        assert time.monotonic() < deadline, "the bad edit was never refused"
        time.sleep(0.1)
    assert httpx.post(f"{server.base}/split", json={}).json()["api"] == "two"
    # Its API removed: the splitter answers 503 with the reason, never a 404 or a stack trace.
    import shutil

    shutil.rmtree(root / "two")
    deadline = time.monotonic() + 30
    while (r := httpx.post(f"{server.base}/split", json={})).status_code != 503:
        assert time.monotonic() < deadline, "the removed API still answered"
        time.sleep(0.1)
    assert "its API two is not served here" in r.json()["error"]["message"]


# -- myelin local: the shadow -----------------------------------------------------------------------------------


def _metric(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def test_the_shadow_gets_a_copy_of_every_request(start_server, tmp_path):
    root = tmp_path / "apis"
    make_api(root, "live")
    seen = tmp_path / "shadow-seen.txt"
    make_api(root, "candidate", f"predictor:\n  env:\n    SEEN_LOG: {seen}\n")
    make_splitter(root, "split", "apis:\n  - {name: live, weight: 100}\n  - {name: candidate, shadow: true}\n")
    server = start_server("local", str(root))
    answers = _post_many(f"{server.base}/split", 500)
    assert {r.json()["api"] for r in answers} == {"live"}  # the shadow's answers never reach a client
    deadline = time.monotonic() + 30
    while len(seen.read_text().split()) < 500 if seen.exists() else True:
        assert time.monotonic() < deadline, f"the shadow saw {len(seen.read_text().split()) if seen.exists() else 0}"
        time.sleep(0.1)
    assert sorted(int(n) for n in seen.read_text().split()) == list(range(500))  # the same bodies, each once
    metrics = httpx.get(f"{server.base}/metrics").text
    assert _metric(metrics, 'myelin_shadow_requests_total{api="candidate",splitter="split",status="200"}') == 500
    assert 'myelin_requests_total{api="candidate",status="200"} 500.0' in metrics


@pytest.mark.parametrize("shadow", ["failing", "slow"])
def test_a_failing_or_slow_shadow_changes_no_answer_and_is_never_waited_for(start_server, tmp_path, shadow):
    """The client's answers through the splitter are the live API's, whatever the shadow does. The slow shadow
    takes 5 minutes per copy: every client is answered while no copy has finished (the router never waits for
    it), the copies beyond the in-flight bound are dropped, not queued. Latencies (interleaved with direct
    requests to the same API) are printed, not asserted: the machine's load is no test's business."""
    root = tmp_path / "apis"
    make_api(root, "live")
    config = "fail: true" if shadow == "failing" else "sleep: 300"
    make_api(root, "candidate", f"predictor:\n  config:\n    {config}\n"
                                "serving:\n  max_concurrency: 4\n  threads: 4\n  timeout: 10m\n  drain_timeout: 1s\n")
    make_splitter(root, "split", "apis:\n  - {name: live, weight: 100}\n  - {name: candidate, shadow: true}\n")
    server = start_server("local", str(root))
    direct, split = [], []
    with httpx.Client(base_url=server.base, timeout=60) as client:
        for n in range(200):  # interleaved: the machine's load affects both alike
            for path, times in (("/live", direct), ("/split", split)):
                t0 = time.perf_counter()
                r = client.post(path, json={"n": n})
                times.append(time.perf_counter() - t0)
                assert r.status_code == 200 and r.json() == {"api": "live", "n": n, "path_seen": True}
        info = next(a for a in client.get("/info").json()["apis"] if a["name"] == "split")["splits"]["shadow"]
        metrics = client.get("/metrics").text
    q = lambda xs, f: sorted(xs)[int(f * (len(xs) - 1))] * 1000  # noqa: E731
    print(f"\n{shadow} shadow: direct p50 {q(direct, .5):.1f} ms p99 {q(direct, .99):.1f} ms; through the splitter "
          f"p50 {q(split, .5):.1f} ms p99 {q(split, .99):.1f} ms; shadow {info}")
    copies = 'myelin_shadow_requests_total{api="candidate",splitter="split"'
    if shadow == "failing":
        assert _metric(metrics, copies + ',status="500"}') > 0
    else:
        assert _metric(metrics, copies) == 0  # not one copy finished, and every client had its answer
        assert info["in_flight"] == 64 and info["dropped"]["busy"] == 200 - 64  # bounded, never queued


def test_a_splitter_over_a_canary_api_is_refused(tmp_path):
    root = tmp_path / "apis"
    make_api(root, "a")
    make_api(root, "b", "rollout:\n  strategy: canary\n  steps:\n    - {weight: 10, pause: 5m}\n")
    make_splitter(root, "split", "apis:\n  - {name: a, weight: 50}\n  - {name: b, weight: 50}\n")
    _, errors = load_specs([str(root)])
    [error] = errors
    assert f"{root / 'split' / 'api.yaml'}: apis[1].name: 'b' is released as a canary" in error
