"""The arithmetic and the tables of the new-call-kind benchmarks (streaming, AsyncAPI vs realtime, scale to zero,
serving.processes): nothing is served or timed here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the scripts import their harness, `run`


def _script(name: str):
    """benchmarks/<name>.py under a name of its own: `async_jobs` is also the name of a test package (tests/async_jobs),
    which a pytest worker may have imported first."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async_jobs = _script("async_jobs")
processes = _script("processes")
scale_to_zero = _script("scale_to_zero")
streaming = _script("streaming")

META = {"date": "2026-12-06 12:00 UTC", "cpu": "CPU", "cpus": 2, "command": "cmd", "loadavg_start": "1.00, 1.00, 1.00",
        "loadavg_end": "2.00, 2.00, 2.00"}


def test_processes_ratios_are_per_round_then_median():
    def rnd(p1, p2, w1, w2):
        return {n: {"64": {"rps": v, "p99_ms": 1.0, "non2xx": 0, "socket_errors": 0}}
                for n, v in zip(processes.NAMES, (p1, p2, w1, w2))}

    # Round 2 is a slower machine: each round is divided by its own ceiling.
    s = processes.summarize([rnd(10, 15, 20, 30), rnd(5, 6, 10, 10), rnd(10, 18, 20, 30)], [64])["64"]
    assert {k: s["myelin-p2/ceiling-w2"][k] for k in ("median", "min", "max")} == {"median": 0.6, "min": 0.5, "max": 0.6}
    assert s["myelin-p2/myelin-p1"]["median"] == 1.5
    assert s["myelin-p1"]["rps"] == 10
    table = processes.markdown({**META, "rounds": 3, "runs": 2, "duration": 5}, {"64": s}, [64])
    assert s["myelin-p2"]["best_rps"] == 18 and s["myelin-p2/ceiling-w2"]["of_bests"] == 0.6
    assert "| myelin-p2/ceiling-w2 | 0.60 (0.50-0.60) · 0.60 |" in table
    assert "wrk shares the two cores" in table and "load average 1.00, 1.00, 1.00" in table


def test_scale_to_zero_target_needs_median_and_max_within_50_ms():
    def cold(overhead):
        return {"first_request_ms": 500 + overhead, "predictor_load_ms": 500, "overhead_ms": overhead,
                "before_load_ms": overhead - 5, "after_load_ms": 5, "warm_request_ms": 1}

    plain = [{"start_to_ready_ms": 900, "overhead_ms": 400}]
    assert scale_to_zero.summary({"cold": [cold(30), cold(40), cold(45)], "plain": plain})["met"] is True
    missed = scale_to_zero.summary({"cold": [cold(30), cold(40), cold(60)], "plain": plain})
    assert missed["met"] is False and missed["overhead_ms"]["median"] == 40
    table = scale_to_zero.markdown({**META, "runs": 3, "load_seconds": 0.5}, missed)
    assert "**not met**" in table and "| 40.0 | 60.0 | 30.0 |" in table


def test_scale_to_zero_table_says_which_cold_starts_the_warm_standby_served():
    def cold(overhead, came_from, rss=None):
        return {"first_request_ms": 500 + overhead, "predictor_load_ms": 500, "overhead_ms": overhead,
                "before_load_ms": overhead - 5, "after_load_ms": 5, "warm_request_ms": 1, "from": came_from,
                "standby_rss_mib": rss}

    plain = [{"start_to_ready_ms": 900, "overhead_ms": 400}]
    s = scale_to_zero.summary({"cold": [cold(30, "standby", 60), cold(40, "standby", 70), cold(900, "new process")],
                               "plain": plain})
    assert s["from_standby"] == 2 and s["standby_rss_mib"] == 65 and s["met_median"] and not s["met"]
    table = scale_to_zero.markdown({**META, "runs": 3, "load_seconds": 0.5}, s)
    assert "2 of 3 were served by the warm standby, the others by a new process" in table
    assert "(VmRSS, median) 65 MiB" in table and "median **met**, max **not met**" in table


def test_streaming_table_marks_each_level_against_50_us():
    items = {"sync": {"inprocess_us": 1.0,
                      "c1": {"served_us": 61.0, "overhead_us": 60.0, "met": False},
                      "c64": {"served_us": 31.0, "overhead_us": 30.0, "met": True}}}
    ttfi = {f"{k}/{c}": {"p50_ms": 1.0, "p99_ms": 2.0, "per_s": 100.0} for k in ("sync", "async", "trivial")
            for c in (1, 64)}
    table = streaming.markdown({**META, "runs": 7, "runs_many": 3, "item_concurrency": [1, 64], "duration": 10,
                                "warmup": 3}, {"items": items, "ttfi": ttfi}, [1, 64])
    assert "| sync | 1.000 | 61.00 · 60.00 · **not met** | 31.00 · 30.00 · met |" in table


def test_async_table_puts_the_realtime_run_beside_the_jobs():
    levels = {"64": {"jobs_per_s": 1000.0, "submit_rps": 2000.0, "submit_p50_ms": 5.0, "submit_p99_ms": 9.0,
                     "backlog": 10, "errors": 0, "realtime": {"rps": 4000.0, "p50_ms": 1.0, "p99_ms": 2.0, "errors": 0}},
              "1": {"jobs_per_s": 100.0, "submit_rps": 100.0, "submit_p50_ms": 5.0, "submit_p99_ms": 9.0,
                    "backlog": 0, "errors": 0}}
    table = async_jobs.table({**META, "runs": 3, "duration": 5.0}, levels)
    assert "| 64 | 1,000 | 2,000 | 5.00 | 9.00 | 10 | 0 | 4,000 | 1.00 | 2.00 | 0 | 0.25 |" in table
    assert "| 1 | 100 | 100 | 5.00 | 9.00 | 0 | 0 | – | – | – | – | – |" in table
