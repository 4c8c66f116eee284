"""The traffic-splitting dashboard's queries (issue 22: "metrics carry the splitter so dashboards show the split"),
proven with `promtool test rules` on synthetic series as the stack's Prometheus stores them (the weighted APIs'
pods count the split and the shadow's copies; a second splitter's series beside them must never count):

- a 90/10 split over two APIs (one of them on two pods) shows as shares 0.9 and 0.1, and requests/s per API;
- the shadow's copies per second by status, the requests not copied per second by reason;
- the shadow's failed share (5xx, error, timeout over all copies), 0 (not a gap) when none failed;
- the weighted APIs' 5xx ratio, only for the APIs the splitter sends requests to, 0 for an API without a 5xx.

tests/infra/promtool/traffic-splitting.test.yml is the render of `render()`: regenerate it with
`python -m tests.infra.test_splitting_queries` after changing the queries (a test compares the two)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from components.observability import queries
from myelin import contract as c

TEST_FILE = Path(__file__).parent / "promtool" / "traffic-splitting.test.yml"
SPLITTER = "sentiment"
OTHER = "other"  # another splitter over the same APIs: its series must not count
SHADOW = "sentiment-v3"
STEPS = 80  # samples 15 s apart: 20 minutes of series
EVAL = "15m"
WINDOW = "1m"

#: Every figure below is a per-second rate, and every series grows by 15x its rate per 15 s sample, so each rate
#: promtool computes is an integer: sums over series are exact in any order (Prometheus sums series in an order
#: that varies between runs; with rates like 5/15 + 3/15 + 2/15 the last bit of a ratio did too) and each expected
#: ratio is one correctly rounded division, as in PromQL.
#: Requests per second each weighted pod answered on the splitter's path: 90/10 by API (v1 on two pods).
SPLIT = {("sentiment-v1", "sentiment-v1-6d5f7c9b8-a"): 54, ("sentiment-v1", "sentiment-v1-6d5f7c9b8-b"): 54,
         ("sentiment-v2", "sentiment-v2-7f9c8d6b5-a"): 12}
#: The shadow's copies per second by status (sent by the weighted pods), and the requests not copied by reason.
COPIES = {"200": 90, "500": 5, "timeout": 3, "error": 2}
DROPS = {"busy": 6, "too_large": 3}
#: Each weighted API's own requests per second by status (its endpoint and the splitter's path): v1 5% 5xx, v2 none.
#: kmeans is served by the stack but weighed by no splitter: its 5xx never show on this dashboard.
ANSWERED = {"sentiment-v1": {"200": 95, "500": 5}, "sentiment-v2": {"200": 12}, "kmeans": {"200": 1, "503": 9}}

#: The panels' expected values at EVAL.
EXPECTED = {
    "split_share": [({"api": "sentiment-v1"}, 108 / 120), ({"api": "sentiment-v2"}, 12 / 120)],
    "split_requests": [({"api": "sentiment-v1"}, 108), ({"api": "sentiment-v2"}, 12)],
    "shadow_copies_by_status": [({"status": s}, n) for s, n in COPIES.items()],
    "shadow_drops_by_reason": [({"reason": r}, n) for r, n in DROPS.items()],
    "shadow_error_ratio": [({}, (5 + 3 + 2) / 100)],
    "weighted_error_ratio": [({"api": "sentiment-v1"}, 5 / 100), ({"api": "sentiment-v2"}, 0.0)],
}


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def _counter(metric: str, per_second: int, **labels: str) -> dict[str, str]:
    """A counter growing by `per_second` a second, sampled every 15 s."""
    return {"series": f"{metric}{_labels({'namespace': 'apis', **labels})}", "values": f"0+{15 * per_second}x{STEPS}"}


def input_series(copies: dict[str, int]) -> list[dict[str, str]]:
    series = []
    for (api, pod), n in SPLIT.items():
        series.append(_counter(c.SPLIT_REQUESTS_TOTAL, n, splitter=SPLITTER, api=api, pod=pod))
        series.append(_counter(c.SPLIT_REQUESTS_TOTAL, 100, splitter=OTHER, api=api, pod=pod))
    # The copies and drops come from both weighted APIs' pods; sums over pods are what the panels show.
    pods = [pod for _, pod in SPLIT]
    for i, (status, n) in enumerate(copies.items()):
        series.append(_counter(c.SHADOW_REQUESTS_TOTAL, n, splitter=SPLITTER, api=SHADOW, pod=pods[i % len(pods)],
                               status=status))
    for i, (reason, n) in enumerate(DROPS.items()):
        series.append(_counter(c.SHADOW_DROPPED_TOTAL, n, splitter=SPLITTER, api=SHADOW, pod=pods[i % len(pods)],
                               reason=reason))
    series.append(_counter(c.SHADOW_REQUESTS_TOTAL, 100, splitter=OTHER, api=SHADOW, pod=pods[0], status="500"))
    series.append(_counter(c.SHADOW_DROPPED_TOTAL, 100, splitter=OTHER, api=SHADOW, pod=pods[0], reason="busy"))
    for api, statuses in ANSWERED.items():
        for status, n in statuses.items():
            series.append(_counter(c.REQUESTS_TOTAL, n, api=api, pod=f"{api}-0", status=status))
    # The shadow's own requests (the copies): not a weighted API, never in the weighted APIs' 5xx panel.
    series.append(_counter(c.REQUESTS_TOTAL, 10, api=SHADOW, pod=f"{SHADOW}-0", status="500"))
    return series


def _exprs() -> dict[str, str]:
    return {p.key: p.expr.replace(queries.SPLITTER_VAR, SPLITTER).replace(queries.RATE_WINDOW_VAR, WINDOW)
            for p in queries.splitter_panels()}


def render() -> str:
    exprs = _exprs()
    assert set(exprs) == set(EXPECTED), "every panel of the splitter dashboard needs expected values"
    tests = [{
        "name": "split-90-10-with-a-failing-and-dropping-shadow",
        "interval": "15s",
        "input_series": input_series(COPIES),
        "promql_expr_test": [
            {"expr": exprs[key], "eval_time": EVAL,
             "exp_samples": [{"labels": _labels(labels), "value": value} for labels, value in samples]}
            for key, samples in EXPECTED.items()],
    }, {
        "name": "every-copy-answered",
        "interval": "15s",
        "input_series": input_series({"200": 100}),
        "promql_expr_test": [{"expr": exprs["shadow_error_ratio"], "eval_time": EVAL,
                              "exp_samples": [{"labels": "{}", "value": 0}]}],
    }]
    header = ("# promtool unit tests of the traffic-splitting dashboard's queries (components/observability/queries.py,\n"
              "# splitter_panels), rendered by tests/infra/test_splitting_queries.py for splitter `sentiment`\n"
              "# (sentiment-v1 90, sentiment-v2 10, shadow sentiment-v3) beside a splitter `other` that must not count.\n")
    return header + yaml.safe_dump({"rule_files": [], "evaluation_interval": "1m", "tests": tests},
                                   sort_keys=False, width=200)


@pytest.fixture(scope="module")
def promtool() -> str:
    from system_packages import ensure

    return ensure("promtool", "prometheus")


def _promtool_test(promtool: str, text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / TEST_FILE.name
    path.write_text(text)
    return subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, cwd=tmp_path)


def test_the_committed_promtool_tests_are_the_render_of_the_queries():
    assert TEST_FILE.read_text() == render(), (
        "tests/infra/promtool/traffic-splitting.test.yml is stale: run `python -m tests.infra.test_splitting_queries`")


def test_promtool_proves_the_split_share_copies_drops_and_error_ratios(promtool, tmp_path):
    out = _promtool_test(promtool, TEST_FILE.read_text(), tmp_path)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("mutation", [
    # The split share without the splitter filter in its denominator: `other`'s requests dilute the shares.
    ("/ on () group_left () sum(rate(myelin_split_requests_total{splitter=\"sentiment\"}",
     "/ on () group_left () sum(rate(myelin_split_requests_total{"),
    # Drops summed over reasons instead of by reason.
    ("sum by (reason) (rate(myelin_shadow_dropped_total", "sum(rate(myelin_shadow_dropped_total"),
    # The shadow's failed share counting only 5xx (a timeout or refused connection is a failure too).
    ('status=~"5..|error|timeout"', 'status=~"5.."'),
])
def test_a_broken_query_would_fail_promtool(promtool, tmp_path, mutation):
    """The promtool test can fail: the same file with a query broken as a plausible mistake would break it does."""
    before, after = mutation
    broken = TEST_FILE.read_text().replace(before, after)
    assert broken != TEST_FILE.read_text(), before
    assert _promtool_test(promtool, broken, tmp_path).returncode != 0


if __name__ == "__main__":
    TEST_FILE.write_text(render())
    print(f"wrote {TEST_FILE}")
