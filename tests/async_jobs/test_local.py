"""An AsyncAPI under `myelin local`: served beside a RealtimeAPI on one port, and reloaded on edit
without losing a job (the old version's worker finishes or hands back what it runs)."""

from __future__ import annotations

import concurrent.futures as cf
import time

import httpx

from conftest import ServerProcess

from .conftest import job_lines_until, make_api, submit, wait_for


def test_local_serves_and_reloads_an_async_api_without_losing_jobs(tmp_path):
    root = tmp_path / "apis"
    api = make_api(root, yaml="serving:\n  max_concurrency: 2\n  threads: 2\n  timeout: 5s\n")
    realtime = root / "echo"
    realtime.mkdir()
    (realtime / "api.yaml").write_text("name: echo\n")
    (realtime / "predictor.py").write_text("class Predictor:\n    def __init__(self, c): pass\n"
                                           "    def predict(self, p): return {'echo': p}\n")
    server = ServerProcess(["local", str(root)], tmp_path, env={"MYELIN_STATE_DIR": str(tmp_path / "state")})
    try:
        server.wait_ready(timeout=60)
        server.wait_settled(timeout=60)
        url = f"{server.base}/jobs"
        with httpx.Client(timeout=10) as client, cf.ThreadPoolExecutor(4) as pool:
            assert client.post(f"{server.base}/echo", json=1).json() == {"echo": 1}
            before = list(pool.map(lambda n: submit(client, url, json={"n": n, "sleep": 0.05}), range(40)))
            source = (api / "predictor.py").read_text()
            (api / "predictor.py").write_text(source.replace('"square": payload["n"] ** 2}',
                                                             '"square": payload["n"] ** 2, "version": 2}'))
            # Submissions go on through the reload.
            during = list(pool.map(lambda n: submit(client, url, json={"n": n, "sleep": 0.05}), range(40, 80)))
            def reloaded() -> bool:  # version 2 of the API serves (the router switched to its process)
                return any(line.get("message") == "serving" and line.get("api") == "jobs" and line.get("version") == 2
                           for line in server.log_lines())

            deadline = time.monotonic() + 60
            while not reloaded() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert reloaded(), server.stdout()[-3000:]
            after = submit(client, url, json={"n": 99})
            docs = wait_for(client, url, before + during + [after])
        assert all(docs[i]["status"] == "completed" for i in before + during)
        assert all(docs[i]["result"]["square"] == n * n for n, i in enumerate(before + during))
        assert docs[after]["result"] == {"n": 99, "square": 9801, "version": 2}
        lines = job_lines_until(lambda ls: len(ls) >= 81, server)
        completions = [l["job_id"] for l in lines if l["job_status"] == "completed"]
        assert sorted(completions) == sorted(before + during + [after])  # each once, none lost
    finally:
        server.stop()
