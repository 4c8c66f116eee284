"""The AsyncAPI contract over loopback against real `myelin serve` processes, once per job store:
SQLite files in a state directory, and SQS + S3 (boto3, the production code path) on moto in server mode.

Each test prints what it counted (`pytest -s` shows it).
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures as cf
import threading
import time

import httpx

from .conftest import job_lines, job_lines_until, make_api, submit, wait_for

FAST = "serving:\n  max_concurrency: 4\n  threads: 4\n  timeout: 2s\n"


def test_200_submitted_jobs_all_complete_with_correct_results(backend, servers, tmp_path):
    server = servers.start(make_api(tmp_path, yaml=FAST), backend.env)
    url = f"{server.base}/jobs"
    with httpx.Client(timeout=30) as client, cf.ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda n: submit(client, url, json={"n": n}), range(200)))
        docs = wait_for(client, url, ids)
    assert len(set(ids)) == 200
    for n, job_id in enumerate(ids):
        doc = docs[job_id]
        assert doc["status"] == "completed", doc
        assert doc["result"] == {"n": n, "square": n * n}
        assert doc["created_at"] <= doc["started_at"] <= doc["finished_at"]
        assert set(doc) == {"id", "status", "created_at", "started_at", "finished_at", "result"}
    metrics = httpx.get(f"{server.base}/metrics").text
    assert 'myelin_async_jobs_total{api="jobs",status="submitted"} 200.0' in metrics
    assert 'myelin_async_jobs_total{api="jobs",status="completed"} 200.0' in metrics
    assert 'myelin_async_job_duration_seconds_count{api="jobs"} 200.0' in metrics
    print(f"\n[{backend.kind}] 200 submitted, {sum(d['status'] == 'completed' for d in docs.values())} completed")


def test_kill_9_mid_queue_and_restart_loses_nothing_and_completes_each_job_once(backend, servers, tmp_path):
    # Slow enough that the queue is still long when the server is killed; a short timeout keeps the
    # visibility timeout (timeout + 5 s) short, so jobs running at the kill come back soon.
    api = make_api(tmp_path, yaml="serving:\n  max_concurrency: 4\n  threads: 4\n  timeout: 1s\n")
    first = servers.start(api, backend.env)
    url = f"{first.base}/jobs"
    accepted: list[tuple[int, str]] = []
    refused = 0
    killed = threading.Event()
    with httpx.Client(timeout=10) as client:
        # Submissions keep going while the server is killed: every 202 must survive it.
        def submitter() -> None:
            nonlocal refused
            for n in range(200):
                try:
                    r = client.post(url, json={"n": n, "sleep": 0.02})
                except httpx.TransportError:
                    refused += 1
                    continue
                assert r.status_code == 202, r.text
                accepted.append((n, r.json()["id"]))
                if len(accepted) == 120:
                    killed.wait(10)

        thread = threading.Thread(target=submitter)
        thread.start()
        deadline = time.monotonic() + 60
        while len(accepted) < 120 and time.monotonic() < deadline:
            time.sleep(0.01)
        first.proc.kill()  # SIGKILL: no drain, no cleanup
        first.proc.wait()
        killed.set()
        thread.join()
        done_before = {line["job_id"] for line in job_lines(first) if line["job_status"] == "completed"}
        assert 0 < len(done_before) < len(accepted), "the kill should land mid-queue"

        second = servers.start(api, backend.env)
        url = f"{second.base}/jobs"
        for n in range(200):  # the rest, to the restarted server
            if n not in {m for m, _ in accepted}:
                accepted.append((n, submit(client, url, json={"n": n, "sleep": 0.02})))
        docs = wait_for(client, url, [job_id for _, job_id in accepted], timeout=120)

    assert len(accepted) == 200
    for n, job_id in accepted:
        assert docs[job_id]["status"] == "completed" and docs[job_id]["result"] == {"n": n, "square": n * n}
    # The store is the truth (a log line may die with the process that stored the outcome): one outcome
    # per job there, and no job completed twice by the two runs.
    lines = job_lines(first, second)
    completions = collections.Counter(line["job_id"] for line in lines if line["job_status"] == "completed")
    assert set(completions) <= {job_id for _, job_id in accepted}
    assert max(completions.values()) == 1, "a job was completed twice"
    assert not done_before & {line["job_id"] for line in job_lines(second)}, "a finished job ran again"
    stored = backend.stored_outcomes()
    assert {job_id for _, job_id in accepted} <= set(stored) and set(stored.values()) == {"completed"}
    retried = [line for line in job_lines(second) if line["attempt"] > 1]
    print(f"\n[{backend.kind}] 200 accepted ({refused} refused while down), {len(done_before)} done before the kill, "
          f"{len(retried)} restarted after their visibility timeout, 0 completed twice")


def test_a_worker_that_dies_is_retried_then_the_job_is_dead_lettered(backend, servers, tmp_path):
    # Two processes: the supervisor replaces a worker that dies, as Kubernetes restarts a pod.
    api = make_api(tmp_path, yaml="serving:\n  processes: 2\n  max_concurrency: 2\n  timeout: 1500ms\n"
                                  "jobs:\n  max_attempts: 2\n")
    server = servers.start(api, backend.env)
    server.wait_workers("jobs", 2)
    url = f"{server.base}/jobs"
    marker = tmp_path / "died-once"
    with httpx.Client(timeout=10) as client:
        # Both are submitted before either kills its process (each sleeps first).
        doomed = submit(client, url, json={"die": True, "sleep": 0.5})
        once = submit(client, url, json={"die_once": str(marker), "n": 7, "sleep": 0.5})
        docs = wait_for(client, url, [doomed, once], timeout=90)
    assert docs[once]["status"] == "completed" and docs[once]["result"] == {"n": 7, "square": 49}
    failed = docs[doomed]
    assert failed["status"] == "failed"
    assert failed["error"]["type"] == "attempts_exhausted" and "2 time(s)" in failed["error"]["message"]
    assert backend.dead_letters() == [doomed]
    lines = job_lines_until(lambda ls: {l["job_id"] for l in ls} >= {once, doomed}, server)
    assert [(l["attempt"], l["job_status"]) for l in lines if l["job_id"] == once] == [(2, "completed")]
    assert [l["job_status"] for l in lines if l["job_id"] == doomed] == ["dead_lettered"]
    print(f"\n[{backend.kind}] die-once job completed on attempt 2; always-dying job dead-lettered after 2 attempts")


def test_predictor_failures_fail_at_once_with_the_error_and_no_retry(backend, servers, tmp_path):
    server = servers.start(make_api(tmp_path, yaml=FAST), backend.env)
    url = f"{server.base}/jobs"
    with httpx.Client(timeout=10) as client:
        ids = {kind: submit(client, url, json={"fail": kind}) for kind in ("predictor_error", "exception")}
        ids["timeout"] = submit(client, url, json={"sleep": 3})
        docs = wait_for(client, url, list(ids.values()))
    assert docs[ids["predictor_error"]]["error"] == {"type": "predictor_error", "message": "asked to fail",
                                                     "status_code": 422}
    assert docs[ids["exception"]]["error"] == {"type": "predictor_failure", "status_code": 500,
                                               "message": "the predictor failed; see the server log"}
    assert docs[ids["timeout"]]["error"]["type"] == "timeout"
    assert all(d["status"] == "failed" and "finished_at" in d and "result" not in d for d in docs.values())
    out = server.stdout()
    assert "a detail that stays in the log" in out and "Traceback" in out  # the log has it, the client never
    assert "a detail" not in str(docs)
    lines = job_lines_until(lambda ls: len(ls) == 3, server)
    assert len(lines) == 3 and all(line["attempt"] == 1 for line in lines)  # no retry
    assert backend.dead_letters() == []


def test_unknown_and_malformed_ids_are_404_json(backend, servers, tmp_path):
    server = servers.start(make_api(tmp_path, yaml=FAST), backend.env)
    for job_id in ("0" * 32, "not-a-job", "..%2F..%2Fetc", "A" * 32):
        r = httpx.get(f"{server.base}/jobs/{job_id}")
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found", r.text
        assert r.headers["content-type"] == "application/json"
    assert httpx.delete(f"{server.base}/jobs/{'0' * 32}").status_code in (404, 405)


def test_results_past_the_retention_are_404(backend, servers, tmp_path):
    api = make_api(tmp_path, yaml="serving:\n  timeout: 1s\njobs:\n  retention: 3s\n")
    server = servers.start(api, backend.env)
    url = f"{server.base}/jobs"
    with httpx.Client(timeout=10) as client:
        job_id = submit(client, url, json={"n": 3})
        submitted = time.monotonic()
        assert wait_for(client, url, [job_id])[job_id]["result"] == {"n": 3, "square": 9}
        time.sleep(max(0.0, 3.3 - (time.monotonic() - submitted)))
        gone = client.get(f"{url}/{job_id}")
    assert gone.status_code == 404 and gone.json()["error"]["type"] == "not_found"
    if backend.kind == "sqlite":  # the worker's periodic purge removes the row itself, not only hides it
        deadline = time.monotonic() + 10
        while job_id in backend.stored_outcomes() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert job_id not in backend.stored_outcomes()


def test_payload_types_json_text_bytes_and_form_round_trip(backend, servers, tmp_path):
    server = servers.start(make_api(tmp_path, yaml=FAST), backend.env)
    url = f"{server.base}/jobs"
    blob = bytes(range(256)) * 4
    with httpx.Client(timeout=10) as client:
        ids = {
            "json": submit(client, url, json={"nested": {"a": [1, 2.5, None, "é"]}}),
            "text": submit(client, url, content="héllo wörld".encode(), headers={"content-type": "text/plain"}),
            "bytes": submit(client, url, content=blob, headers={"content-type": "application/octet-stream"}),
            "form": submit(client, url, data={"k": "v"}),
            "request": submit(client, url, json={"request": True}, params={"q": "1"},
                              headers={"x-trace": "abc"}),
        }
        bad = client.post(url, content=b"{not json", headers={"content-type": "application/json"})
        docs = wait_for(client, url, list(ids.values()))
    assert docs[ids["json"]]["result"] == {"nested": {"a": [1, 2.5, None, "é"]}}
    assert docs[ids["text"]]["result"] == "héllo wörld" and "result_encoding" not in docs[ids["text"]]
    assert docs[ids["bytes"]]["result_encoding"] == "base64"
    assert base64.b64decode(docs[ids["bytes"]]["result"]) == blob
    assert docs[ids["form"]]["result"] == {"k": "v"}
    # query parameters and headers reach a predictor that declares them
    assert docs[ids["request"]]["result"] == {"query": {"q": "1"}, "trace": "abc", "key": None}
    # a payload the worker could not decode is refused at submit, never queued
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "bad_request"
