"""API keys (networking.auth.api_keys_env): 401 without the right key, keys never in logs or metrics."""

from __future__ import annotations

import os

import httpx

from .helpers import APIS, Tally

ENV_VAR = "MYELIN_RELIABILITY_KEYS"          # tests/reliability/apis/keyed/api.yaml
KEYS = ("k1-7f3a9c2e5d8b4a61", "k2-0e9d8c7b6a5f4e3d")


def test_keys_are_required_and_never_leak(start_server):
    server = start_server("serve", str(APIS / "keyed"), env={ENV_VAR: f" {KEYS[0]} , {KEYS[1]} "})
    url = f"{server.base}/keyed"
    cases = [
        ("no key", {}, 401),
        ("wrong key", {"x-api-key": "k1-wrong"}, 401),
        ("key prefix", {"x-api-key": KEYS[0][:-1]}, 401),
        ("key plus suffix", {"x-api-key": KEYS[0] + "x"}, 401),
        ("both keys joined", {"x-api-key": ",".join(KEYS)}, 401),
        ("wrong bearer", {"authorization": "Bearer nope"}, 401),
        ("basic auth", {"authorization": "Basic " + KEYS[0]}, 401),
        ("empty key", {"x-api-key": ""}, 401),
        ("first key, x-api-key", {"x-api-key": KEYS[0]}, 200),
        ("second key, x-api-key", {"x-api-key": KEYS[1]}, 200),
        ("first key, Bearer", {"authorization": f"Bearer {KEYS[0]}"}, 200),
        ("second key, bearer", {"authorization": f"bearer {KEYS[1]}"}, 200),
    ]
    tally = Tally()
    wrong = {}
    with httpx.Client(timeout=5) as http:
        for name, headers, expected in cases:
            r = http.post(url, json={}, headers=headers)
            tally.add(r.status_code)
            if r.status_code != expected:
                wrong[name] = r.status_code
            if expected == 401:
                err = r.json()["error"]
                if err["type"] != "unauthorized" or r.headers["content-type"] != "application/json" or any(
                        k in r.text for k in KEYS):
                    wrong[name] = r.text
        probes = {p: http.get(f"{server.base}{p}").status_code for p in ("/healthz", "/readyz", "/metrics", "/info")}
        exposed = {p: http.get(f"{server.base}{p}").text for p in ("/metrics", "/info", "/openapi.json")}
    server.stop()  # flush every log line
    leaks = [where for where, text in [("stdout", server.stdout()), ("stderr", server.stderr()), *exposed.items()]
             if any(k in text for k in KEYS) or any(k[:8] in text for k in KEYS)]
    print(tally.summary("api keys") + f", probes without key={probes}, leaks={leaks}")
    assert not wrong, wrong
    assert tally.counts[401] == 8 and tally.counts[200] == 4
    assert probes == {"/healthz": 200, "/readyz": 200, "/metrics": 200, "/info": 200}
    assert not leaks
    assert ENV_VAR in exposed["/info"]  # the variable's name is shown, never its value


def test_unset_or_empty_key_variable_refuses_to_serve(start_server):
    """No keys: `myelin serve` refuses to start (exit 1, the variable named); nothing is served without keys."""
    outcomes = {}
    for label, env in (("unset", {}), ("empty", {ENV_VAR: " , "})):
        saved = os.environ.pop(ENV_VAR, None)
        try:
            server = start_server("serve", str(APIS / "keyed"), env=env, wait=False)
        finally:
            if saved is not None:
                os.environ[ENV_VAR] = saved
        code = server.proc.wait(timeout=30)
        outcomes[label] = code
        assert ENV_VAR in server.stderr() and ENV_VAR in server.stdout()  # the failure names the variable
    print(f"api keys, variable unset/empty: exit codes = {outcomes}")
    assert outcomes == {"unset": 1, "empty": 1}


def test_keys_from_a_mounted_file_and_not_the_environment(start_server, tmp_path):
    """The cluster mounts the keys as a file and sets <VAR>_FILE (so subprocesses do not inherit them)."""
    keys = tmp_path / "keys"
    keys.write_text(f"{KEYS[0]},{KEYS[1]}\n")
    saved = os.environ.pop(ENV_VAR, None)
    try:
        server = start_server("serve", str(APIS / "keyed"), env={ENV_VAR + "_FILE": str(keys)})
    finally:
        if saved is not None:
            os.environ[ENV_VAR] = saved
    with httpx.Client(timeout=5) as http:
        ok = [http.post(f"{server.base}/keyed", json={}, headers={"x-api-key": k}).status_code for k in KEYS]
        wrong = http.post(f"{server.base}/keyed", json={}, headers={"x-api-key": "nope"}).status_code
    assert ok == [200, 200] and wrong == 401
