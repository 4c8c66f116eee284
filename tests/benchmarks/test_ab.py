"""benchmarks/ab.py: argument handling and the arithmetic of its report (nothing is served or timed here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import ab  # noqa: E402


def test_defaults_and_quick():
    args = ab.parse_args(["main", "HEAD"])
    assert (args.rounds, args.runs, args.duration, args.warmup, args.levels) == (5, 2, 8.0, 3.0, [64])
    assert args.api == "kmeans"
    quick = ab.parse_args(["main", "HEAD", "--quick", "--concurrency", "64,256"])
    assert (quick.rounds, quick.runs, quick.duration, quick.warmup, quick.levels) == (2, 1, 2.0, 1.0, [64, 256])
    # explicit values win over --quick
    assert ab.parse_args(["a", "b", "--quick", "--rounds", "7"]).rounds == 7


@pytest.mark.parametrize("bad", [["a", "b", "--concurrency", "x"], ["a", "b", "--concurrency", "0"],
                                 ["a", "b", "--rounds", "-1"], ["a"], ["a", "b", "--api", "nope"]])
def test_bad_arguments_exit_with_usage(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        ab.parse_args(bad)
    assert exc.value.code == 2


def test_a_and_b_swap_places_and_the_ceiling_runs_every_round():
    assert ab.round_order(0) == ["A", "B", "ceiling"]
    assert ab.round_order(1) == ["B", "A", "ceiling"]
    assert all(ab.round_order(i)[-1] == "ceiling" for i in range(6))


def test_best_run_is_the_fastest():
    assert ab.best([{"rps": 10.0, "p99_ms": 1}, {"rps": 12.0, "p99_ms": 3}, {"rps": 11.0}])["rps"] == 12.0


def test_summary_divides_by_each_rounds_own_ceiling():
    rounds = [
        {"A": {"64": 25.0}, "B": {"64": 30.0}, "ceiling": {"64": 50.0}},   # A 50%, B 60%
        {"A": {"64": 20.0}, "B": {"64": 26.0}, "ceiling": {"64": 40.0}},   # A 50%, B 65% (a slower machine)
        {"A": {"64": 27.5}, "B": {"64": 27.5}, "ceiling": {"64": 50.0}},   # A 55%, B 55%
    ]
    s = ab.summarize(rounds, [64])["64"]
    assert s["ratio_a"] == pytest.approx([0.5, 0.5, 0.55])
    assert s["ratio_b"] == pytest.approx([0.6, 0.65, 0.55])
    assert s["a_minus_b"] == pytest.approx([-0.1, -0.15, 0.0])
    assert s["A"]["median"] == pytest.approx(0.5)
    assert s["B"]["median"] == pytest.approx(0.6)
    assert s["diff"]["median"] == pytest.approx(-0.1)
    assert (s["diff"]["min"], s["diff"]["max"]) == pytest.approx((-0.15, 0.0))
    assert s["diff"]["stdev"] == pytest.approx(0.0763762, rel=1e-5)
    assert s["b_over_a"]["median"] == pytest.approx(1.2)
    assert s["ceiling_rps"]["median"] == 50.0
    text = ab.report({"64": s}, rounds, "main", "HEAD")
    assert "A = main, B = HEAD" in text
    assert "median  A 50.0% (range 50.0%..55.0%), B 60.0% (range 55.0%..65.0%)" in text
    assert "A-B     median -10.0 pts, range -15.0 pts..+0.0 pts, stdev 7.6 pts over 3 rounds" in text


def test_one_round_has_no_spread():
    s = ab.summarize([{"A": {"8": 1.0}, "B": {"8": 2.0}, "ceiling": {"8": 4.0}}], [8])["8"]
    assert s["diff"]["stdev"] == 0.0 and s["diff"]["median"] == pytest.approx(-0.25)


def test_a_folder_is_taken_as_it_is(tmp_path):
    (tmp_path / "predictor_image" / "myelin").mkdir(parents=True)
    rev = ab.checkout(str(tmp_path))
    assert (rev.tree, rev.sha, rev.created) == (tmp_path.resolve(), "", False)


def test_an_unknown_revision_is_an_error():
    with pytest.raises(RuntimeError, match="rev-parse"):
        ab.checkout("no-such-revision-anywhere")


def test_routes_a_and_b():
    args = ab.parse_args([".", ".", "--route-b", "oip"])
    assert (args.route_a, args.route_b) == ("myelin", "oip")
    with pytest.raises(SystemExit):
        ab.parse_args([".", ".", "--route-b", "oip", "--api", "trivial"])
    spec = {"raw": {"name": "kmeans"}, "endpoint": "/kmeans"}
    assert ab.route_request("myelin", spec) == ("/kmeans", b'{"features":[1.5,-2.25]}')
    path, body = ab.route_request("oip", spec)
    assert path == "/v2/models/kmeans/infer"
    assert body == b'{"inputs":[{"name":"features","shape":[1,2],"datatype":"FP32","data":[1.5,-2.25]}]}'
