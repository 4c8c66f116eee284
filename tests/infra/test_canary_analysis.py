"""The canary analysis's queries, proven with `promtool test rules` on synthetic series (issue 22 item 2): a
healthy canary passes, a canary answering 5xx fails, a slow one fails, one without enough traffic is
inconclusive (never a pass), and the old version's pods never count. The outcome of each measurement is Argo's
(utils/evaluate/evaluate.go at v1.9.0: Failed when the failure condition holds, Successful when only the success
condition holds, else Inconclusive), evaluated here on the values promtool checked.

tests/infra/promtool/canary-analysis.test.yml is the render of `render()`: regenerate it with
`python -m tests.infra.test_canary_analysis` after changing the queries."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from components.apis.canary import HASH_PLACEHOLDER, analysis_conditions, analysis_queries
from myelin.spec import spec_from_dict

TEST_FILE = Path(__file__).parent / "promtool" / "canary-analysis.test.yml"
NAMESPACE = "apis"
API = "demo"
CANARY_HASH = "5f7c9d8b4"
STABLE_HASH = "6b8f7c5d9"
SPEC = spec_from_dict({"name": API, "rollout": {
    "strategy": "canary", "steps": [{"weight": 10, "pause": "5m"}],
    "analysis": {"max_error_ratio": 0.01, "max_p99_seconds": 0.5, "min_requests": 50, "interval": "1m"}}}, "test")
BUCKETS = ("0.1", "0.25", "0.5", "1", "2.5", "+Inf")
STEPS = 80  # samples 15 s apart: 20 minutes of series
EVAL = "15m"

#: scenario -> (per-15s increase of the canary's 200s, of its 500s, the bucket its requests fall in (None: no
#: series at all)), the values the two queries give, and Argo's outcome for each.
SCENARIOS = {
    "healthy": ((199, 1, "0.1"), {"error-ratio": 0.005, "p99-seconds": 0.099},
                {"error-ratio": "Successful", "p99-seconds": "Successful"}),
    "errors": ((180, 20, "0.1"), {"error-ratio": 0.1, "p99-seconds": 0.099},
               {"error-ratio": "Failed", "p99-seconds": "Successful"}),
    "slow": ((200, 0, "2.5"), {"error-ratio": 0.0, "p99-seconds": 2.485},
             {"error-ratio": "Successful", "p99-seconds": "Failed"}),
    "little-traffic": ((2, 0, "0.1"), {"error-ratio": -1, "p99-seconds": -1},
                       {"error-ratio": "Inconclusive", "p99-seconds": "Inconclusive"}),
    "no-canary-pods-yet": ((0, 0, None), {"error-ratio": -1, "p99-seconds": -1},
                           {"error-ratio": "Inconclusive", "p99-seconds": "Inconclusive"}),
}


def _pod_series(pod: str, ok: int, errors: int, bucket: str | None) -> list[dict[str, str]]:
    if bucket is None:
        return []
    labels = f'namespace="{NAMESPACE}",api="{API}",pod="{pod}"'
    series = [{"series": f'myelin_requests_total{{{labels},status="200"}}', "values": f"0+{ok}x{STEPS}"}]
    if errors:
        series.append({"series": f'myelin_requests_total{{{labels},status="500"}}', "values": f"0+{errors}x{STEPS}"})
    total = ok + errors
    for le in BUCKETS:
        inside = float(le) >= float(bucket) if le != "+Inf" else True
        series.append({"series": f'myelin_request_duration_seconds_bucket{{{labels},le="{le}"}}',
                       "values": f"0+{total if inside else 0}x{STEPS}"})
    return series


def render() -> str:
    queries = {name: q.replace(HASH_PLACEHOLDER, CANARY_HASH)
               for name, q in analysis_queries(SPEC, NAMESPACE).items()}
    tests = []
    for scenario, ((ok, errors, bucket), values, _) in SCENARIOS.items():
        # The old version's pods (half 5xx, slow) run beside the canary in every scenario: they must not count.
        series = _pod_series(f"{API}-{CANARY_HASH}-x7k2p", ok, errors, bucket)
        series += _pod_series(f"{API}-{STABLE_HASH}-q9w4z", 50, 50, "2.5")
        tests.append({
            "name": scenario,
            "interval": "15s",
            "input_series": series,
            "promql_expr_test": [{"expr": queries[name], "eval_time": EVAL,
                                  "exp_samples": [{"labels": "{}", "value": value}]}
                                 for name, value in values.items()],
        })
    header = ("# promtool unit tests of the canary analysis's queries (components/apis/canary.py), rendered by\n"
              "# tests/infra/test_canary_analysis.py for an API `demo` (max_error_ratio 0.01, max_p99_seconds 0.5,\n"
              "# min_requests 50, interval 1m); its canary pods' hash is " + CANARY_HASH + ".\n")
    return header + yaml.safe_dump({"rule_files": [], "evaluation_interval": "1m", "tests": tests},
                                   sort_keys=False, width=200)


def argo_outcome(value: float, success: str, failure: str) -> str:
    """Argo's EvaluateResult on a one-element vector, for conditions of the form Myelin writes."""
    def holds(condition: str) -> bool:
        expr = condition.replace("&&", " and ").replace("||", " or ")
        assert re.fullmatch(r"[\w\[\]\s.<>=0-9-]+", expr), expr
        return bool(eval(expr, {"__builtins__": {}}, {"result": [value]}))  # noqa: S307 - our own conditions

    if holds(failure):
        return "Failed"
    return "Successful" if holds(success) else "Inconclusive"


@pytest.fixture(scope="module")
def promtool() -> str:
    from system_packages import ensure

    return ensure("promtool", "prometheus")


def test_the_committed_promtool_tests_are_the_render_of_the_queries():
    assert TEST_FILE.read_text() == render(), (
        "tests/infra/promtool/canary-analysis.test.yml is stale: run `python -m tests.infra.test_canary_analysis`")


def test_promtool_proves_every_query_on_every_scenario(promtool, tmp_path):
    path = tmp_path / TEST_FILE.name
    path.write_text(TEST_FILE.read_text())
    out = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_argo_judges_each_scenario_as_intended(scenario):
    _, values, outcomes = SCENARIOS[scenario]
    conditions = analysis_conditions(SPEC)
    assert {name: argo_outcome(values[name], *conditions[name]) for name in values} == outcomes


def test_too_little_traffic_is_never_a_pass_whatever_the_thresholds():
    for ratio, p99 in ((1.0, 1e9), (0.0, 1e-9)):
        spec = spec_from_dict({"name": API, "rollout": {"strategy": "canary", "steps": [{"weight": 10}],
                               "analysis": {"max_error_ratio": ratio, "max_p99_seconds": p99}}}, "test")
        for success, failure in analysis_conditions(spec).values():
            assert argo_outcome(-1, success, failure) == "Inconclusive"
            assert argo_outcome(float("nan"), success, failure) == "Inconclusive"


def test_a_broken_query_would_fail_promtool(promtool, tmp_path):
    """The promtool test can fail: the same file with the 5xx filter dropped from the error ratio does."""
    broken = TEST_FILE.read_text().replace(',status=~"5.."', "")
    assert broken != TEST_FILE.read_text()
    path = tmp_path / TEST_FILE.name
    path.write_text(broken)
    out = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode != 0


if __name__ == "__main__":
    TEST_FILE.write_text(render())
    print(f"wrote {TEST_FILE}")
