"""`kind: AsyncAPI` in api.yaml, the settings that choose the job store and role, and the command line."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from myelin import contract as c
from myelin.settings import Settings, SettingsError
from myelin.spec import (KINDS, ApiSpec, AsyncApiSpec, SpecError, TrafficSplitterSpec, load_api_spec, parse_duration,
                         spec_from_dict)

from conftest import ROOT

from .conftest import make_api


def test_kind_selects_the_model_and_defaults():
    assert KINDS == {"RealtimeAPI": ApiSpec, "AsyncAPI": AsyncApiSpec, "TrafficSplitter": TrafficSplitterSpec}
    spec = spec_from_dict({"name": "docs", "kind": "AsyncAPI"}, "api.yaml")
    assert isinstance(spec, AsyncApiSpec) and spec.endpoint == "/docs"
    assert spec.jobs.retention.seconds == 7 * 86400 and spec.jobs.max_attempts == 3
    a = spec.autoscaling
    assert (a.min_replicas, a.max_replicas, a.polling_interval.seconds, a.cooldown_period.seconds) == (0, 100, 30, 300)
    assert spec.target_queue_depth == spec.serving.max_concurrency == 1
    # Read the same way as for a RealtimeAPI, so code that handles every API does not break on this kind.
    assert spec.batching is None and spec.target_in_flight == 1.0 and a.initial_replicas == 0
    assert spec.visibility_timeout == 60 + 6  # serving.timeout + 10% (at least 5 s)
    assert spec_from_dict({"name": "d", "kind": "AsyncAPI", "serving": {"timeout": "2s"}}, "x").visibility_timeout == 7
    assert spec.queue_retention_seconds == 7 * 86400 and spec.dead_letter_max_receive_count == 4
    assert spec.retention_days == 7
    short = spec_from_dict({"name": "d", "kind": "AsyncAPI", "serving": {"timeout": "1s"}, "jobs": {"retention": "90s"}}, "x")
    assert (short.retention_days, short.queue_retention_seconds) == (1, 90)
    assert spec_from_dict({"name": "d", "kind": "AsyncAPI", "jobs": {"retention": "30d"}}, "x").queue_retention_seconds \
        == 14 * 86400  # SQS keeps a message at most 14 days
    # Shared sections are the RealtimeAPI's own types.
    realtime = spec_from_dict({"name": "docs"}, "api.yaml")
    assert type(spec.serving) is type(realtime.serving) and type(spec.networking) is type(realtime.networking)
    assert "batching" not in spec.model_dump()  # and it round-trips through MYELIN_API_SPEC
    assert spec_from_dict(spec.model_dump(mode="json"), "env") == spec


def test_days_are_a_duration_unit():
    assert parse_duration("7d") == 604800 and parse_duration("0.5d") == 43200


@pytest.mark.parametrize("data, field, words", [
    ({"batching": {"max_batch_size": 4}}, "batching", "not available for kind AsyncAPI"),
    ({"jobs": {"retention": "30s"}, "serving": {"timeout": "1m"}}, "", "jobs.retention (30s) must be longer"),
    ({"jobs": {"max_attempts": 0}}, "jobs.max_attempts", "greater than or equal to 1"),
    ({"serving": {"timeout": "11h"}}, "", "serving.timeout (11h) is too long"),
    ({"autoscaling": {"target_in_flight": 2}}, "autoscaling.target_in_flight", "unknown field"),
    ({"autoscaling": {"min_replicas": 5, "max_replicas": 2}}, "autoscaling", "greater than max_replicas"),
    ({"jobs": {"retention": 7}}, "jobs.retention", "unit"),
])
def test_errors_name_file_and_field(data, field, words):
    with pytest.raises(SpecError) as info:
        spec_from_dict({"name": "docs", "kind": "AsyncAPI", **data}, "apis/docs/api.yaml")
    assert any(f == field and words in msg for f, msg in info.value.problems), info.value.problems
    assert str(info.value).startswith("apis/docs/api.yaml: ")


def test_unknown_kind_lists_both():
    with pytest.raises(SpecError, match="use one of RealtimeAPI, AsyncAPI"):
        spec_from_dict({"name": "docs", "kind": "BatchAPI"}, "api.yaml")


def test_settings_choose_the_store_and_role():
    assert (Settings().async_store, Settings().role, Settings().state_dir) == ("sqlite", "all", ".myelin")
    env = {c.ASYNC_STORE_ENV: "sqs", c.ASYNC_QUEUE_URL_ENV: "https://sqs.eu-west-1.amazonaws.com/1/q",
           c.ASYNC_DEAD_LETTER_QUEUE_URL_ENV: "https://sqs.eu-west-1.amazonaws.com/1/dlq",
           c.ASYNC_STORAGE_URI_ENV: "s3://bucket/apis/docs", c.ROLE_ENV: "worker", c.STATE_DIR_ENV: "/tmp/s"}
    s = Settings.from_env(env)
    assert (s.async_store, s.role, s.async_storage_uri, s.state_dir) == ("sqs", "worker", "s3://bucket/apis/docs", "/tmp/s")
    with pytest.raises(SettingsError, match="MYELIN_ASYNC_STORE=sqs needs MYELIN_ASYNC_DEAD_LETTER_QUEUE_URL"):
        Settings.from_env({k: v for k, v in env.items() if k != c.ASYNC_DEAD_LETTER_QUEUE_URL_ENV})
    with pytest.raises(SettingsError, match="MYELIN_ASYNC_QUEUE_URL set, but MYELIN_ASYNC_STORE is not 'sqs'"):
        Settings.from_env({c.ASYNC_QUEUE_URL_ENV: env[c.ASYNC_QUEUE_URL_ENV]})
    for var, bad in ((c.ROLE_ENV, "both"), (c.ASYNC_STORE_ENV, "redis"), (c.ASYNC_STORAGE_URI_ENV, "bucket/x"),
                     (c.ASYNC_QUEUE_URL_ENV, "q")):
        with pytest.raises(SettingsError, match=var):
            Settings.from_env({**env, var: bad})


def myelin(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "myelin.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=60, env={**os.environ, **(env or {})})


def test_role_applies_to_async_apis_only(tmp_path):
    out = myelin("serve", "tests/runtime/apis/echo", "--role", "gateway", "--port", "1")
    assert out.returncode == 2 and "applies to kind AsyncAPI only" in out.stderr
    out = myelin("local", str(tmp_path), env={c.ROLE_ENV: "worker"})
    assert out.returncode != 0 and "unset MYELIN_ROLE" in out.stderr


def test_validate_describes_an_async_api(tmp_path):
    make_api(tmp_path, yaml="jobs:\n  retention: 2d\n  max_attempts: 5\n")
    out = myelin("validate", str(tmp_path / "jobs"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "async jobs, retention 2d, max_attempts 5" in out.stdout
    assert load_api_spec(tmp_path / "jobs").kind == "AsyncAPI"


def settled_info(server) -> dict:
    """The API's /info entry once it has left `loading`."""
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        info = httpx.get(f"{server.base}/info").json()["apis"][0]
        if info["state"] != "loading":
            return info
        time.sleep(0.1)
    raise AssertionError("still loading after 60 s")


def test_a_store_that_cannot_open_fails_the_api_clearly(start_server, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    server = start_server("serve", str(make_api(tmp_path)), env={c.STATE_DIR_ENV: str(blocker / "state")},
                          wait=False)
    line = server.load_failure()
    where, _, message = line.partition(": job store")
    assert "MYELIN_STATE_DIR" in where and message, line


def test_an_unreachable_queue_fails_the_api_naming_the_variable(start_server, tmp_path, moto):
    from .conftest import AWS_ENV

    env = {**AWS_ENV, "AWS_ENDPOINT_URL": moto.url, c.ASYNC_STORE_ENV: "sqs",
           c.ASYNC_QUEUE_URL_ENV: f"{moto.url}/123456789012/no-such-queue",
           c.ASYNC_DEAD_LETTER_QUEUE_URL_ENV: f"{moto.url}/123456789012/no-such-dlq",
           c.ASYNC_STORAGE_URI_ENV: "s3://no-such-bucket/x"}
    server = start_server("serve", str(make_api(tmp_path)), env=env, wait=False)
    line = server.load_failure()
    assert "failed to load: MYELIN_ASYNC_QUEUE_URL=" in line and "NonExistentQueue" in line, line
