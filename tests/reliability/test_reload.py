"""Zero-downtime reload in `myelin local`: edits swap versions under a steady stream, none fails."""

from __future__ import annotations

import os
import shutil
import threading
import time

import httpx

from .helpers import APIS, Tally, outcome_of

CLIENTS = 3
MAX_REQUESTS = 4000  # per client: the stream is bounded in count as well as in time


def _write(path, text: str) -> None:
    """Write the way an editor saving atomically does: a new file renamed over the old one."""
    tmp = path.with_name(path.name + ".tmp~")
    tmp.write_text(text)
    os.replace(tmp, path)


def _wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


def test_edits_reload_without_dropping_a_request(start_server, tmp_path):
    apis = tmp_path / "apis"
    shutil.copytree(APIS / "versioned", apis / "versioned")
    folder = apis / "versioned"
    server = start_server("local", str(apis))
    url = f"{server.base}/versioned"

    tally = Tally()
    seen: list[list[tuple[int, str]]] = [[] for _ in range(CLIENTS)]
    stop = threading.Event()

    def client(i: int) -> None:
        with httpx.Client(timeout=10) as http:
            for _ in range(MAX_REQUESTS):
                if stop.is_set():
                    return
                outcome, response = outcome_of(lambda: http.post(url, json={"i": i}))
                tally.add(outcome)
                if outcome == 200:
                    body = response.json()
                    seen[i].append((body["version"], body["tag"]))

    def latest() -> set[tuple[int, str]]:
        return {s[-1] for s in seen if s}

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        _wait_for(lambda: all(seen), 10, "every client answered")
        time.sleep(0.5)
        source = (folder / "predictor.py").read_text()
        # 1. edit the predictor: VERSION 1 -> 2
        _write(folder / "predictor.py", source.replace("VERSION = 1", "VERSION = 2"))
        _wait_for(lambda: latest() == {(2, "a")}, 20, "version 2 serving every client")
        time.sleep(0.5)
        # 2. edit api.yaml: the config the predictor is constructed with
        spec = (folder / "api.yaml").read_text()
        _write(folder / "api.yaml", spec.replace("tag: a", "tag: b"))
        _wait_for(lambda: latest() == {(2, "b")}, 20, "api.yaml edit serving every client")
        time.sleep(0.5)
        # 3. a broken edit: a syntax error on line 6; the old version must keep serving
        broken = source.replace("VERSION = 1", "VERSION = 3").replace("class Predictor:", "class Predictor(:")
        assert broken.splitlines()[6 - 1] == "class Predictor(:"
        marks = [len(s) for s in seen]
        _write(folder / "predictor.py", broken)
        _wait_for(lambda: any(e.get("message") == "reload refused" for e in server.log_lines()), 20,
                  "the refused reload reported")
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(15)

    print(tally.summary("reload") + f", versions={sorted({v for s in seen for v in s})}")
    assert tally.sent == tally.counts[200], tally.counts  # every request answered 200: nothing dropped
    assert {v for s in seen for v in s} == {(1, "a"), (2, "a"), (2, "b")}
    for s in seen:  # each client saw versions only move forward: one version per request, no flapping
        assert s == sorted(s), "a client went back to an older version"
    after_broken = [v for i, s in enumerate(seen) for v in s[marks[i]:]]
    assert after_broken and set(after_broken) == {(2, "b")}  # the broken version never served
    # Not on a terminal: the console's lines are JSON events; the refused version names file, line and error,
    # and /info says which version serves and why the newer one was refused.
    (refused,) = [e for e in server.log_lines() if e.get("message") == "reload refused"]
    assert "predictor.py, line 6" in refused["error"] and "SyntaxError" in refused["error"], refused
    assert refused["previous_version_serving"] is True
    (api,) = httpx.get(f"{server.base}/info").json()["apis"]
    assert api["state"] == "ready" and api["version"] == 3 and api["refused"]["version"] == 4
    assert "SyntaxError" in api["refused"]["error"]
