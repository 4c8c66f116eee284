"""Process lifecycle: SIGTERM drain, several processes per replica, `myelin local` and `validate`."""

import concurrent.futures as cf
import signal
import subprocess
import sys
import time

import httpx

from adversarial.helpers import metric, wait_for

APIS = "tests/runtime/apis"


def test_sigterm_drains_in_flight_then_exits_zero(start_server):
    server = start_server("serve", f"{APIS}/echo")
    client = httpx.Client(timeout=10)
    with cf.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(client.post, f"{server.base}/echo", params={"mode": "sleep", "s": "0.8"}, json={})
        # In flight before the signal (a fixed 0.2 s could lose that race on a busy machine).
        wait_for(lambda: metric(httpx.get(f"{server.base}/metrics", timeout=5).text, "myelin_in_flight_requests",
                                "echo") == 1, 10, "the slow request in flight")
        server.signal(signal.SIGTERM)
        time.sleep(0.1)
        # readiness turns 503 at once; new predictions are refused cleanly
        ready = httpx.get(f"{server.base}/readyz", timeout=5)
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        refused = httpx.post(f"{server.base}/echo", json={}, timeout=5)
        assert refused.status_code == 503 and refused.json()["error"]["type"] == "shutting_down"
        assert refused.headers["retry-after"] == "1"
        # the in-flight request completes
        assert slow.result().status_code == 200 and slow.result().json()["slept"] is True
    # and the process exits 0, well inside the 30s default grace period
    assert server.proc.wait(timeout=10) == 0


def test_drain_gives_up_after_the_grace_period(start_server, tmp_path):
    api = tmp_path / "stuck"
    api.mkdir()
    (api / "api.yaml").write_text("name: stuck\nserving:\n  drain_timeout: 1s\n  timeout: 60s\n")
    (api / "predictor.py").write_text(
        "import time\nclass Predictor:\n    def __init__(self, c): pass\n    def predict(self, p):\n        time.sleep(30)\n"
    )
    server = start_server("serve", str(api))
    with cf.ThreadPoolExecutor(1) as pool:
        pool.submit(httpx.post, f"{server.base}/stuck", json={}, timeout=20)
        time.sleep(0.3)
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        code = server.proc.wait(timeout=15)
        assert time.monotonic() - started < 10  # bounded by drain_timeout + uvicorn's final close, not the 30s predict
    assert code == 0


def test_several_processes_share_the_port_and_report_replica_metrics(start_server):
    server = start_server("serve", f"{APIS}/crashy")
    server.wait_workers("crashy", 2)
    pids = set()
    n = 40
    with httpx.Client(timeout=10) as client:
        for _ in range(n):
            # a new connection each time, so the kernel spreads them over the workers
            r = httpx.post(f"{server.base}/crashy", json={}, timeout=10)
            assert r.status_code == 200
            pids.add(r.json()["pid"])
        deadline = time.monotonic() + 10
        total = None
        while time.monotonic() < deadline:
            text = client.get(f"{server.base}/metrics").text
            line = [l for l in text.splitlines() if l.startswith('myelin_requests_total{api="crashy",status="200"}')]
            total = float(line[0].split()[-1]) if line else None
            if total == n:
                break
            time.sleep(0.2)
    assert len(pids) == 2, pids
    assert total == n  # whichever worker answers /metrics reports the whole replica
    assert 'myelin_ready_processes{api="crashy"} 2.0' in text


def test_dead_worker_is_replaced_and_requests_do_not_hang(start_server):
    server = start_server("serve", f"{APIS}/crashy")
    server.wait_workers("crashy", 2)
    # The worker dies holding this request: the connection drops at once (a load balancer turns that
    # into a 502), it never hangs until a timeout.
    started = time.monotonic()
    try:
        outcome = httpx.post(f"{server.base}/crashy", json={"crash": True}, timeout=20).status_code
    except httpx.RemoteProtocolError:
        outcome = "disconnected"
    assert outcome == "disconnected" or outcome >= 500
    assert time.monotonic() - started < 15
    deadline = time.monotonic() + 30
    ok = 0
    while time.monotonic() < deadline and ok < 10:
        try:
            if httpx.post(f"{server.base}/crashy", json={}, timeout=5).status_code == 200:
                ok += 1
        except httpx.HTTPError:
            pass
    assert ok == 10
    time.sleep(0.5)
    assert "worker died" in server.stdout()
    # The replacement answers once it has loaded the API (before, it may get a connection and answer 503 not
    # ready: on a busy machine its start takes longer than the loop above).
    server.wait_workers("crashy", 2)
    pids = {httpx.post(f"{server.base}/crashy", json={}).json()["pid"] for _ in range(30)}
    assert len(pids) == 2  # back to full strength


def test_supervisor_drains_workers_and_exits_zero(start_server):
    server = start_server("serve", f"{APIS}/crashy")
    server.wait_workers("crashy", 2)
    with cf.ThreadPoolExecutor(2) as pool:
        slow = [pool.submit(httpx.post, f"{server.base}/crashy", json={"sleep": 0.8}, timeout=10) for _ in range(2)]
        # Both admitted before the signal (a fixed 0.3 s could lose that race on a busy machine).
        wait_for(lambda: metric(httpx.get(f"{server.base}/metrics", timeout=5).text, "myelin_in_flight_requests",
                                "crashy") == 2, 10, "both requests in flight")
        server.signal(signal.SIGTERM)
        assert [f.result().status_code for f in slow] == [200, 200]
    assert server.proc.wait(timeout=15) == 0


def test_local_serves_every_api_and_reports_the_broken_one(start_server):
    server = start_server("local", APIS)
    assert httpx.post(f"{server.base}/echo", params={"mode": "list"}, json={}).json() == [1, 2, 3]
    assert httpx.post(f"{server.base}/v1/async", json={"a": 1}).status_code == 200
    assert httpx.post(f"{server.base}/batched", json={"i": 1}).json()["i"] == 1
    broken = httpx.post(f"{server.base}/broken", json={})
    # Clients get a generic 503 (load errors can carry secrets); the developer sees the error on the console
    # and in /info, which `myelin local` serves on their own machine.
    assert broken.status_code == 503 and "failed to load" in broken.json()["error"]["message"]
    assert "ZeroDivisionError" not in broken.text
    events = server.log_lines()  # not on a terminal: the console's lines are JSON events on stdout
    assert any(e.get("message") == "serving" and e["url"] == f"http://127.0.0.1:{server.port}/echo" for e in events)
    (failure,) = [e for e in events if e.get("message") == "failed" and e.get("api") == "broken"]
    assert "predictor.py, line 6" in failure["error"] and "ZeroDivisionError" in failure["error"]
    assert "Traceback" in failure["traceback"]
    info = httpx.get(f"{server.base}/info").json()
    states = {a["name"]: a["state"] for a in info["apis"]}
    assert states["broken"] == "failed" and states["echo"] == "ready"
    broken_info = next(a for a in info["apis"] if a["name"] == "broken")
    assert "ZeroDivisionError" in broken_info["error"]  # the developer's own machine: /info says why


def test_local_reports_a_bad_spec_and_serves_the_rest(tmp_path, start_server):
    good = tmp_path / "apis" / "good"
    bad = tmp_path / "apis" / "bad"
    for folder in (good, bad):
        folder.mkdir(parents=True)
        (folder / "predictor.py").write_text("class Predictor:\n    def __init__(self, c): pass\n    def predict(self, p): return p\n")
    (good / "api.yaml").write_text("name: good\n")
    (bad / "api.yaml").write_text("name: bad\nserving:\n  max_concurency: 3\n")
    server = start_server("local", str(tmp_path / "apis"))
    assert httpx.post(f"{server.base}/good", json={"x": 1}).json() == {"x": 1}
    assert "serving.max_concurency: unknown field" in server.stdout()


def test_validate_command(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "myelin.cli", "validate", f"{APIS}/echo", f"{APIS}/batched"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "✓ echo" in ok.stdout and "batching ≤8" in ok.stdout
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "api.yaml").write_text("name: bad\n")
    (bad / "predictor.py").write_text("import not_a_real_module_xyz\n")
    res = subprocess.run([sys.executable, "-m", "myelin.cli", "validate", str(bad)], capture_output=True, text=True)
    assert res.returncode == 1
    assert "predictor.py, line 1" in res.stdout and "not_a_real_module_xyz" in res.stdout


def test_missing_dependency_names_the_requirements_file(tmp_path, start_server):
    api = tmp_path / "apis" / "needs-dep"
    api.mkdir(parents=True)
    (api / "api.yaml").write_text("name: needs-dep\n")
    (api / "requirements.txt").write_text("not-installed-package-xyz==1.0\n")
    (api / "predictor.py").write_text(
        "class Predictor:\n    def __init__(self, c):\n        import not_installed_package_xyz\n"
        "    def predict(self, p):\n        return p\n")
    server = start_server("local", str(tmp_path / "apis"), ready_status=503)
    (failure,) = [e for e in server.log_lines() if e.get("message") == "failed"]
    # Caught before the API starts: which packages, and the exact command.
    assert failure["api"] == "needs-dep" and "not-installed-package-xyz==1.0" in failure["error"]
    assert f"-m pip install -r {api / 'requirements.txt'}" in failure["error"]
