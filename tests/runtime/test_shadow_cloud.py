"""A TrafficSplitter's shadow in the cloud (issue 22): the API that answers a request on the splitter's path
(MYELIN_ENDPOINT_ALIASES) copies it to the shadow's URL (MYELIN_SHADOW_TARGETS) in the background, bounded, with
the local router's metrics and reasons. Real `myelin serve` processes on 127.0.0.1 (and, for a shadow that never
answers, a socket in this process that reads and never writes), stopped by pid."""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from myelin.settings import Settings, SettingsError
from myelin.shadow import SHADOW_MAX_IN_FLIGHT

PREDICTOR = """
import os
import time


class Predictor:
    def __init__(self, config):
        self.config = config

    def predict(self, payload, query_params, headers):
        log = os.environ.get("SEEN_LOG")
        if log:
            with open(log, "a") as f:
                f.write(f"{payload.get('n')} {headers.get('x-request-id')} {query_params.get('q')}\\n")
        if self.config.get("sleep"):
            time.sleep(float(self.config["sleep"]))
        if self.config.get("fail"):
            raise RuntimeError("the shadow fails on purpose")
        return {"api": os.environ["API_NAME"], "n": payload.get("n")}
"""

KEY = "k-123"
AUTH = "networking:\n  auth: {api_keys_env: KEYS}\n"


def make_api(root: Path, name: str, extra: str = "") -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "api.yaml").write_text(f"name: {name}\n{AUTH}{extra}")
    (folder / "predictor.py").write_text(PREDICTOR)
    return folder


def metric(text: str, prefix: str) -> float:
    """The sum of every sample whose line starts with `prefix` (0 if none)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def metrics(server) -> str:
    return httpx.get(f"{server.base}/metrics", timeout=10).text


def wait_for(predicate, what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def start_pair(start_server, tmp_path, shadow_url: str | None = None, shadow_extra: str = "",
               target_params: str = ""):
    """The shadow `candidate` (unless `shadow_url` points elsewhere) and the weighted API `live`, which answers
    the splitter `split`'s path /split and copies to the shadow."""
    root = tmp_path / "apis"
    seen = tmp_path / "shadow-seen.txt"
    shadow = None
    if shadow_url is None:
        shadow = start_server("serve", str(make_api(root, "candidate", shadow_extra)),
                              env={"KEYS": KEY, "SEEN_LOG": str(seen), "API_NAME": "candidate"})
        shadow_url = f"{shadow.base}/candidate"
    live = start_server("serve", str(make_api(root, "live")), env={
        "KEYS": KEY, "API_NAME": "live", "MYELIN_ENDPOINT_ALIASES": "split=/split",
        "MYELIN_SHADOW_TARGETS": f"split={shadow_url};api=candidate{target_params}"})
    return live, shadow, seen


def post(url: str, n: int, key: str | None = KEY, **kw) -> httpx.Response:
    headers = {"x-api-key": key} if key else {}
    return httpx.post(url, json={"n": n}, headers=headers, timeout=30, **kw)


COPIES = 'myelin_shadow_requests_total{api="candidate",splitter="split"'
DROPPED = 'myelin_shadow_dropped_total{api="candidate",'


def test_the_shadow_gets_a_copy_of_each_request_on_the_splitters_path_only(start_server, tmp_path):
    live, shadow, seen = start_pair(start_server, tmp_path)
    answers = [post(f"{live.base}/split", n, params={"q": "x"}) for n in range(30)]
    assert [(r.status_code, r.json()) for r in answers] == [(200, {"api": "live", "n": n}) for n in range(30)]
    wait_for(lambda: seen.exists() and len(seen.read_text().splitlines()) == 30,
             f"the shadow saw {seen.read_text() if seen.exists() else 'nothing'}")
    lines = [line.split(" ") for line in seen.read_text().splitlines()]
    # Every body, the query string, the API key (the shadow answered 200 with its own keys) and the request id of
    # the client's answer.
    assert sorted(int(n) for n, _, _ in lines) == list(range(30))
    assert {q for _, _, q in lines} == {"x"}
    assert {rid for _, rid, _ in lines} == {r.headers["x-request-id"] for r in answers}
    text = metrics(live)
    assert metric(text, COPIES + ',status="200"}') == 30
    assert 'myelin_split_requests_total{api="live",splitter="split"} 30.0' in text
    # Direct requests on the API's own endpoint are not copied.
    assert all(post(f"{live.base}/live", n).status_code == 200 for n in range(10))
    time.sleep(1.0)  # copies, if any were sent, would be on their way; none must arrive
    assert len(seen.read_text().splitlines()) == 30
    assert metric(metrics(live), COPIES) == 30
    info = httpx.get(f"{live.base}/info", timeout=10).json()["shadows"]["split"]
    assert info["name"] == "candidate" and info["answered"] == 30 and info["in_flight"] == 0
    # The shadow's own metrics count the copies as its requests.
    assert metric(metrics(shadow), 'myelin_requests_total{api="candidate",status="200"}') == 30


def test_a_request_its_api_refuses_before_reading_the_body_is_not_copied(start_server, tmp_path):
    live, _, seen = start_pair(start_server, tmp_path)
    assert post(f"{live.base}/split", 1, key="wrong").status_code == 401
    assert post(f"{live.base}/split", 2).status_code == 200
    wait_for(lambda: metric(metrics(live), COPIES) == 1, "the admitted request's copy")
    text = metrics(live)
    assert metric(text, DROPPED + 'reason="not_read",splitter="split"}') == 1
    assert [line.split(" ")[0] for line in seen.read_text().splitlines()] == ["2"]


@pytest.mark.parametrize("shadow", ["down", "failing", "slow"])
def test_a_down_failing_or_slow_shadow_changes_no_answer(start_server, tmp_path, shadow):
    """Down: nothing listens at the URL (status error); failing: every predict raises (500); slow: it sleeps past
    the timeout the cluster passed (1 s, plus the 5 s grace: status timeout)."""
    url = None
    if shadow == "down":
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{s.getsockname()[1]}/candidate"
    extra = {"failing": "predictor:\n  config: {fail: true}\n",
             "slow": "predictor:\n  config: {sleep: 30}\nserving:\n  timeout: 60s\n"}.get(shadow, "")
    live, _, _ = start_pair(start_server, tmp_path, url, extra, ";timeout=1" if shadow == "slow" else "")
    answers = [post(f"{live.base}/split", n) for n in range(12)]
    assert [(r.status_code, r.json()) for r in answers] == [(200, {"api": "live", "n": n}) for n in range(12)]
    # Each copy ends counted: refused connections as `error`, the 500s as such; the slow shadow's copies wait
    # for its one slot (the first times out; the shadow may refuse later ones with 503 while its slot is held).
    status = {"down": "error", "failing": "500", "slow": "timeout"}[shadow]
    wait_for(lambda: metric(metrics(live), COPIES) == 12,
             f"copies counted: {[line for line in metrics(live).splitlines() if 'shadow' in line]}")
    text = metrics(live)
    assert metric(text, COPIES + f',status="{status}"}}') >= (1 if shadow == "slow" else 12)
    assert metric(text, COPIES + ',status="200"}') == 0
    # The client's answers while copies fail or hang are the live API's, as fast as ever (no wall-clock bound:
    # they are answered at all while 12 copies are still pending or failing).
    assert post(f"{live.base}/split", 99).json() == {"api": "live", "n": 99}


class Silent:
    """A shadow that accepts connections, reads what it is sent and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.conns: list[socket.socket] = []
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/candidate"

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)

    def close(self) -> None:
        self.stop = True
        self.thread.join()
        for conn in self.conns:
            conn.close()
        self.sock.close()


def test_copies_in_flight_are_bounded_and_a_silent_shadow_changes_no_answer(start_server, tmp_path):
    silent = Silent()
    try:
        live, _, _ = start_pair(start_server, tmp_path, silent.url, target_params=";timeout=300")
        extra = 10
        answers = [post(f"{live.base}/split", n) for n in range(SHADOW_MAX_IN_FLIGHT + extra)]
        assert all(r.status_code == 200 and r.json()["api"] == "live" for r in answers)
        text = metrics(live)
        assert metric(text, DROPPED + 'reason="busy",splitter="split"}') == extra
        assert metric(text, COPIES) == 0  # none answered: every slot is held by a copy still waiting
        info = httpx.get(f"{live.base}/info", timeout=10).json()["shadows"]["split"]
        assert info["in_flight"] == SHADOW_MAX_IN_FLIGHT and info["dropped"] == {"busy": extra}
        wait_for(lambda: len(silent.conns) == SHADOW_MAX_IN_FLIGHT, f"{len(silent.conns)} connections")
    finally:
        silent.close()


def test_a_body_larger_than_the_shadows_limit_is_not_copied(start_server, tmp_path):
    live, _, seen = start_pair(start_server, tmp_path, target_params=";max_body=64")
    big = httpx.post(f"{live.base}/split", json={"n": 1, "pad": "x" * 200}, headers={"x-api-key": KEY}, timeout=30)
    assert big.status_code == 200
    assert post(f"{live.base}/split", 2).status_code == 200
    wait_for(lambda: metric(metrics(live), COPIES) == 1, "the small request's copy")
    assert metric(metrics(live), DROPPED + 'reason="too_large",splitter="split"}') == 1
    assert [line.split(" ")[0] for line in seen.read_text().splitlines()] == ["2"]


@pytest.mark.parametrize("raw, words", [
    ("split=https://x.apis.svc.cluster.local/x", "not <splitter>=<url>"),
    ("split=http://x.apis.svc.cluster.local", "not <splitter>=<url>"),
    ("split=http://x/p?q=1", "not <splitter>=<url>"),
    ("http://x/p", "not <splitter>=<url>"),
    ("split=http://x/p;speed=3", "api=<name>, timeout=<seconds> or max_body=<size>"),
    ("split=http://x/p;timeout=0", "must be greater than 0"),
    ("split=http://x/p,split=http://y/p", "named twice"),
])
def test_a_bad_shadow_target_names_the_variable(raw, words):
    with pytest.raises(SettingsError, match="MYELIN_SHADOW_TARGETS") as err:
        Settings.from_env({"MYELIN_ENDPOINT_ALIASES": "split=/split", "MYELIN_SHADOW_TARGETS": raw})
    assert words in str(err.value)


def test_a_shadow_for_a_path_the_api_does_not_answer_is_refused():
    with pytest.raises(SettingsError, match=re.escape("MYELIN_SHADOW_TARGETS: other not in MYELIN_ENDPOINT_ALIASES")):
        Settings.from_env({"MYELIN_ENDPOINT_ALIASES": "split=/split", "MYELIN_SHADOW_TARGETS": "other=http://x/p"})


def test_the_shadows_name_defaults_to_its_services():
    [target] = Settings.from_env({"MYELIN_ENDPOINT_ALIASES": "s=/s", "MYELIN_SHADOW_TARGETS":
                                  "s=http://v3.apis.svc.cluster.local./v3;timeout=2.5;max_body=1Mi"}).shadow_targets
    assert (target.shadow, target.timeout, target.max_body) == ("v3", 2.5, 2**20)
