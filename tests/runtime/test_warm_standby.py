"""The warm standby of `myelin local` (issue 20: scale to zero within 50 ms of the predictor's own load): one
pre-started process that has imported the runtime becomes the process of the API woken by a request. Real
servers on 127.0.0.1, stopped by pid; no wall-clock thresholds (each wait below is a deadline, not a measure)."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import ServerProcess

ROOT = Path(__file__).resolve().parents[2]

#: What the predictor sees of its process: everything a new process and a standby could differ in.
PREDICTOR = """
import os
import sys


class Predictor:
    def __init__(self, config):
        self.seen_at_init = {"env": dict(os.environ), "cwd": os.getcwd()}

    def predict(self, payload):
        main = sys.modules["__main__"]
        return {
            "pid": os.getpid(), "pgid": os.getpgid(0), "cwd": os.getcwd(), "argv": sys.argv,
            "env": dict(os.environ), "init": self.seen_at_init,
            "main": {"name": main.__name__, "spec": getattr(main.__spec__, "name", None),
                     "file": getattr(main, "__file__", None), "package": getattr(main, "__package__", None)},
            "path": sys.path, "flags": list(sys.flags), "stdin": os.path.realpath("/proc/self/fd/0"),
        }
"""


def make_api(root: Path, name: str, idle: str = "60s", min_replicas: int = 0) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "api.yaml").write_text(
        f"name: {name}\nserving:\n  timeout: 60s\n"
        f"autoscaling:\n  min_replicas: {min_replicas}\n  downscale_stabilization: {idle}\n")
    (folder / "predictor.py").write_text(PREDICTOR)
    return folder


def get_info(server: ServerProcess) -> dict:
    return httpx.get(f"{server.base}/info", timeout=10).json()


def api_info(server: ServerProcess, name: str) -> dict:
    return next(a for a in get_info(server)["apis"] if a["name"] == name)


def wait_for(what, check, timeout: float = 90.0, server: ServerProcess | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout}s" + (f"\n{server.stdout()[-3000:]}" if server else ""))


def ready_standby(server: ServerProcess, other_than: int | None = None) -> dict:
    def check():
        standby = get_info(server).get("standby")
        if standby and standby["state"] == "ready" and standby["pid"] != other_than:
            return standby
        return None
    return wait_for("a ready warm standby", check, server=server)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (ended, not yet reaped) is gone
        return Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def events(server: ServerProcess, message: str) -> list[dict]:
    return [e for e in server.log_lines() if e.get("message") == message]


def post(server: ServerProcess, name: str) -> dict:
    r = httpx.post(f"{server.base}/{name}", json={}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def local(start_server, tmp_path):
    def start(*names: str, **kwargs) -> tuple[ServerProcess, Path]:
        root = tmp_path / "apis"
        for name in names:
            make_api(root, name, **kwargs)
        return start_server("local", str(root), "--no-reload"), root
    return start


def test_a_woken_api_answers_from_the_standby_in_the_process_a_new_start_would_give(local):
    # Two APIs scaled to zero woken at once: one standby, so one becomes the standby and the other a new
    # process, whatever the timing. What each predictor sees of its process must be the same.
    server, root = local("alpha", "beta")
    standby = ready_standby(server)
    assert {a["name"] for a in get_info(server)["apis"]} == {"alpha", "beta"}  # the standby is no API

    with cf.ThreadPoolExecutor(2) as pool:
        seen = dict(zip(("alpha", "beta"), pool.map(lambda name: post(server, name), ("alpha", "beta"))))
    came_from = {name: api_info(server, name)["scale_to_zero"]["last_cold_start_from"] for name in seen}
    assert sorted(came_from.values()) == ["new process", "standby"], came_from
    warm = next(name for name, how in came_from.items() if how == "standby")
    cold = next(name for name, how in came_from.items() if how == "new process")
    assert seen[warm]["pid"] == standby["pid"]  # the standby became the API's process
    assert api_info(server, warm)["pid"] == standby["pid"]
    assert [e.get("standby_pid") for e in events(server, "cold start") if e["api"] == warm] == [standby["pid"]]
    assert [e.get("standby_pid") for e in events(server, "cold start") if e["api"] == cold] == [None]

    a, b = seen[warm], seen[cold]
    assert a["env"] == b["env"]  # the whole environment, MYELIN_ARRIVAL_HEADER included
    assert a["env"]["MYELIN_ARRIVAL_HEADER"] == "x-myelin-arrival"
    assert a["init"] == b["init"]  # ... as __init__ saw it, and the working folder
    assert a["cwd"] == b["cwd"] == os.path.realpath(ROOT)
    assert a["main"] == b["main"]  # run as `python -m myelin.cli`
    assert a["main"]["spec"] == "myelin.cli" and a["main"]["name"] == "__main__"
    assert a["flags"] == b["flags"] and a["path"] == b["path"]
    assert a["stdin"] == b["stdin"] == "/dev/null"
    # argv: `<myelin/cli.py> serve <folder> --uds <socket>`, each with its own folder and socket.
    assert a["argv"][0] == b["argv"][0] and a["argv"][0].endswith(os.path.join("myelin", "cli.py"))
    for name, argv in ((warm, a["argv"]), (cold, b["argv"])):
        assert argv[1:3] == ["serve", str(root / name)] and argv[3] == "--uds"
    # Its own process group, as every API process has (killed whole when it ends).
    assert a["pgid"] == a["pid"] and b["pgid"] == b["pid"]

    # A new standby replaces the one used, once the wakes are over.
    again = ready_standby(server, other_than=standby["pid"])
    assert again["pid"] not in (a["pid"], b["pid"])


def test_a_standby_killed_is_replaced_and_the_next_wake_uses_the_new_one(local):
    server, _ = local("alpha", idle="1s")
    first = ready_standby(server)
    os.kill(first["pid"], signal.SIGKILL)
    second = ready_standby(server, other_than=first["pid"])
    assert not alive(first["pid"])
    answer = post(server, "alpha")
    assert answer["pid"] == second["pid"]
    assert api_info(server, "alpha")["scale_to_zero"]["last_cold_start_from"] == "standby"

    # Unloaded, then woken again: by the standby started after the last wake.
    wait_for("alpha unloaded", lambda: api_info(server, "alpha")["state"] == "idle" and not alive(answer["pid"]),
             server=server)
    third = ready_standby(server, other_than=second["pid"])
    assert post(server, "alpha")["pid"] == third["pid"]


def test_no_standby_is_left_when_myelin_local_stops_or_is_killed(local, start_server, tmp_path):
    server, _ = local("alpha")
    standby = ready_standby(server)["pid"]
    woken = post(server, "alpha")["pid"]
    spare = ready_standby(server, other_than=standby)["pid"]
    server.stop()  # SIGTERM: the drain stops every API process and the standby
    wait_for("the API process and the standby gone", lambda: not alive(woken) and not alive(spare))

    # Killed with SIGKILL (no drain, no clean-up): the standby still goes (its parent-death signal).
    root = tmp_path / "apis2"
    make_api(root, "gamma")
    killed = start_server("local", str(root), "--no-reload")
    spare = ready_standby(killed)["pid"]
    killed.proc.send_signal(signal.SIGKILL)
    killed.proc.wait(timeout=30)
    wait_for("the standby gone after myelin local was killed", lambda: not alive(spare))


def test_no_standby_while_no_api_scales_to_zero(local):
    server, _ = local("always", min_replicas=1)
    assert api_info(server, "always")["state"] == "ready"
    time.sleep(1.5)  # several of the manager's 0.25 s checks: none starts a standby (not a timing assertion)
    assert "standby" not in get_info(server)
    assert not [e for e in server.log_lines() if e.get("message") == "standby ready"]


def test_the_standby_is_used_only_when_nothing_but_myelin_variables_change():
    from myelin.local.standby import Standby, env_difference

    base = {"PATH": "/usr/bin", "PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8"}
    standby = Standby(base, "/work", on_stderr=lambda line: None, on_exit=lambda s: None)
    standby.ready = True
    standby._proc = type("Running", (), {"returncode": None, "pid": 1})()
    assert standby.usable_for({**base, "MYELIN_ARRIVAL_HEADER": "x-myelin-arrival"}, "/work")
    assert not standby.usable_for({**base, "PYTHONPATH": "/elsewhere"}, "/work")  # read at the interpreter's start
    assert not standby.usable_for({**base, "LANG": "de_DE.UTF-8"}, "/work")
    assert not standby.usable_for({k: v for k, v in base.items() if k != "PYTHONUNBUFFERED"}, "/work")
    assert not standby.usable_for(base, "/elsewhere")  # sys.path[0] is the working folder at the start
    assert env_difference({"A": "1", "B": "2"}, {"A": "1", "C": "3"}) == {"B", "C"}
    standby.ready = False
    assert not standby.usable_for(base, "/work")


def test_the_loader_forgets_exactly_the_modules_of_the_api_folder(tmp_path, monkeypatch):
    """The loader's look-up of module files (each folder once, each module object once; the standby does it ahead)
    finds what `Path.resolve` of every file found: modules under the folder, through symbolic links either way."""
    from myelin import loader

    api, other, outside = tmp_path / "api", tmp_path / "other", tmp_path / "outside"
    for folder in (api, other, outside):
        folder.mkdir()
    (api / "w_helper.py").write_text("WHO = 'api'\n")
    (api / "w_linked_target.py").write_text("WHO = 'target'\n")
    (other / "w_helper.py").write_text("WHO = 'other'\n")
    (outside / "w_plain.py").write_text("WHO = 'plain'\n")
    os.symlink(api / "w_linked_target.py", outside / "w_linked.py")  # a file outside, linked into the folder
    os.symlink(api, tmp_path / "alias")  # the folder itself through a link
    for name in ("w_helper", "w_linked", "w_plain", "w_linked_target"):
        monkeypatch.delitem(sys.modules, name, raising=False)

    monkeypatch.syspath_prepend(str(outside))
    monkeypatch.syspath_prepend(str(tmp_path / "alias"))
    import w_helper  # noqa: F401  (through the alias)
    import w_linked  # noqa: F401
    import w_plain  # noqa: F401
    loader.remember_module_files()  # looked up once, as the standby does before its API is known
    loader._forget_modules_from(api)
    assert "w_helper" not in sys.modules and "w_linked" not in sys.modules
    assert sys.modules["w_plain"].WHO == "plain"

    # A module of the same name from another folder is a new module object: looked up anew, not forgotten.
    monkeypatch.syspath_prepend(str(other))
    import w_helper as again
    assert again.WHO == "other"
    loader._forget_modules_from(api)
    assert sys.modules["w_helper"] is again
    loader._forget_modules_from(other)
    assert "w_helper" not in sys.modules


def test_a_load_failure_in_the_standby_is_reported_as_in_a_new_process(local, tmp_path):
    server, root = local("alpha")
    (root / "alpha" / "predictor.py").write_text(
        "class Predictor:\n    def __init__(self, config):\n        raise RuntimeError('the weights are missing')\n\n"
        "    def predict(self, payload):\n        return {}\n")
    standby = ready_standby(server)
    r = httpx.post(f"{server.base}/alpha", json={}, timeout=60)
    assert r.status_code == 503 and "failed to load during its cold start" in r.json()["error"]["message"]
    described = api_info(server, "alpha")
    assert described["state"] == "failed" and "the weights are missing" in described["error"]
    assert [e.get("standby_pid") for e in events(server, "cold start")] == [standby["pid"]]
    wait_for("the failed process gone", lambda: not alive(standby["pid"]), server=server)
    assert ready_standby(server, other_than=standby["pid"])  # the next standby comes all the same


def test_a_standby_stopped_while_it_starts_releases_whoever_waits_for_it(tmp_path):
    """`myelin local` stopping while its standby still imports: the stop kills it, and the task waiting for it to
    be ready ends (a stop that waits for the standby's start task must not hang)."""
    import asyncio

    from myelin.local.standby import Standby

    async def scenario() -> tuple[bool, int | None, int | None]:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "predictor_image")}
        standby = Standby(env, str(ROOT), on_stderr=lambda line: None, on_exit=lambda s: None)
        await standby.start()
        waiter = asyncio.ensure_future(standby.wait_ready())
        await asyncio.sleep(0)
        await standby.stop()  # long before its imports are done
        ready = await asyncio.wait_for(waiter, 30)  # a deadline against a hang, not a measure
        return ready, standby.pid, standby.returncode

    ready, pid, code = asyncio.run(scenario())
    assert ready is False and code == -signal.SIGKILL
    assert not alive(pid)


def test_a_standby_that_ends_before_reading_its_assignment_gives_way_to_a_new_process(tmp_path):
    """The standby can end (killed) between the router's check and its reading of the assignment: nothing of the
    API ran in it, so the API starts in a new process, as when no standby was ready."""
    import asyncio
    import shutil
    import tempfile

    from myelin.local.child import ApiProcess

    folder = make_api(tmp_path / "apis", "alpha")
    sockets = Path(tempfile.mkdtemp(prefix="myelin-test-"))  # short: a Unix socket's path has a length limit

    class EndedStandby:  # a process that ended without saying it read its assignment
        pid = None

        async def assign(self, argv, env, cwd):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", "pass", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            await proc.wait()
            return proc

    async def scenario() -> tuple[bool, bool, dict]:
        child = ApiProcess("alpha", folder, 1, sockets, on_stdout=lambda c, line: None,
                           on_stderr=lambda c, line: None)
        try:
            ok = await child.start(standby=EndedStandby())
            answer = (await child.client.post("/alpha", json={})).json() if ok else {}
            return ok, child.from_standby, answer
        finally:
            await child.stop(5)

    try:
        ok, from_standby, answer = asyncio.run(scenario())
    finally:
        shutil.rmtree(sockets, ignore_errors=True)
    assert ok and not from_standby
    assert answer["main"]["spec"] == "myelin.cli" and answer["argv"][1:3] == ["serve", str(folder)]
    assert not alive(answer["pid"])  # stopped with the test
