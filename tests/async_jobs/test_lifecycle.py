"""AsyncAPI processes: SIGTERM finishes or hands back the running job, gateway and worker roles as
separate processes (the cloud's layout) on one store, and API keys on both routes."""

from __future__ import annotations

import signal
import time

import httpx

from .conftest import job_lines, job_lines_until, make_api, submit, wait_for


def test_sigterm_finishes_the_short_job_and_returns_the_long_one_to_the_queue(backend, servers, tmp_path):
    api = make_api(tmp_path, yaml="serving:\n  max_concurrency: 2\n  threads: 2\n  timeout: 20s\n"
                                  "  drain_timeout: 2s\n")
    first = servers.start(api, backend.env)
    url = f"{first.base}/jobs"
    with httpx.Client(timeout=10) as client:
        short = submit(client, url, json={"n": 1, "sleep": 1})
        long = submit(client, url, json={"n": 2, "sleep": 6})
        wait_for(client, url, [short, long], statuses=("in_progress",), timeout=30)
        first.signal(signal.SIGTERM)
        time.sleep(0.2)
        assert httpx.get(f"{first.base}/readyz").status_code == 503
        refused = client.post(url, json={"n": 3})
        assert refused.status_code == 503 and refused.json()["error"]["type"] == "shutting_down"
        assert client.get(f"{url}/{short}").status_code == 200  # reads still answer while draining
        assert first.proc.wait(timeout=20) == 0
        lines = {line["job_id"]: line for line in job_lines(first)}
        assert lines[short]["job_status"] == "completed"  # finished within drain_timeout
        assert lines[long]["job_status"] == "returned"  # handed back, not lost

        second = servers.start(api, backend.env)
        docs = wait_for(client, f"{second.base}/jobs", [short, long], timeout=60)
    assert docs[short]["result"] == {"n": 1, "square": 1} and docs[long]["result"] == {"n": 2, "square": 4}
    # The interrupted run did not count as an attempt.
    lines = job_lines_until(lambda ls: ls, second)
    assert [(l["job_id"], l["attempt"], l["job_status"]) for l in lines] == [(long, 1, "completed")]


def test_gateway_and_worker_run_as_separate_processes_on_one_store(backend, servers, tmp_path):
    api = make_api(tmp_path, yaml="serving:\n  max_concurrency: 2\n  timeout: 5s\n")
    loaded = tmp_path / "loaded-by"
    env = {**backend.env, "JOBS_LOADED_MARKER": str(loaded)}
    gateway = servers.start(api, env, "--role", "gateway")
    worker = servers.start(api, env, "--role", "worker")
    with httpx.Client(timeout=10) as client:
        url = f"{gateway.base}/jobs"
        ids = [submit(client, url, json={"n": n}) for n in range(20)]
        docs = wait_for(client, url, ids)
        assert all(docs[i]["result"] == {"n": n, "square": n * n} for n, i in enumerate(ids))
        # The worker runs jobs but does not take requests; the gateway never loads the predictor.
        assert client.post(f"{worker.base}/jobs", json={"n": 1}).status_code == 404
        assert client.get(f"{worker.base}/jobs/{ids[0]}").status_code == 404
        assert loaded.read_text().split() == [str(worker.proc.pid)]
        info = {s: client.get(f"{s.base}/info").json()["apis"][0] for s in (gateway, worker)}
        assert (info[gateway]["role"], info[worker]["role"]) == ("gateway", "worker")
        gateway_metrics = client.get(f"{gateway.base}/metrics").text
        worker_metrics = client.get(f"{worker.base}/metrics").text
    assert 'myelin_async_jobs_total{api="jobs",status="submitted"} 20.0' in gateway_metrics
    assert 'myelin_async_jobs_total{api="jobs",status="completed"} 20.0' in worker_metrics
    lines = job_lines_until(lambda ls: len(ls) == 20, worker)
    assert len(lines) == 20 and {l["job_status"] for l in lines} == {"completed"} and not job_lines(gateway)


def test_api_keys_guard_submit_and_status_and_never_reach_the_store(servers, tmp_path):
    api = make_api(tmp_path, yaml="networking:\n  auth:\n    api_keys_env: JOBS_KEYS\n")
    state = tmp_path / "state"
    env = {"MYELIN_STATE_DIR": str(state), "JOBS_KEYS": "k-secret-1,k-secret-2"}
    server = servers.start(api, env)
    url = f"{server.base}/jobs"
    with httpx.Client(timeout=10) as client:
        assert client.post(url, json={"n": 1}).status_code == 401
        assert client.post(url, json={"n": 1}, headers={"x-api-key": "wrong"}).status_code == 401
        job = submit(client, url, json={"request": True}, headers={"x-api-key": "k-secret-2", "x-trace": "t"})
        denied = client.get(f"{url}/{job}")
        assert denied.status_code == 401 and denied.json()["error"]["type"] == "unauthorized"
        doc = wait_for(httpx.Client(timeout=10, headers={"authorization": "Bearer k-secret-1"}), url, [job])[job]
    assert doc["result"] == {"query": {}, "trace": "t", "key": None}  # the key is not handed on or stored
    for path in state.iterdir():
        assert b"k-secret" not in path.read_bytes(), path
    assert "k-secret" not in server.stdout()
    # A worker needs no keys: it takes no requests.
    worker = servers.start(api, {"MYELIN_STATE_DIR": str(state)}, "--role", "worker")
    assert httpx.get(f"{worker.base}/readyz").status_code == 200
