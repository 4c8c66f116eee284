"""Attacks on an `async def predict` as a careless (or ordinary) predictor author writes one.

Its first step used to run on the request's own task (no task of its own until it suspended). What the
first step saw as `asyncio.current_task()` was then the request's task, not the one that runs the rest of
predict: `asyncio.timeout()` (and `asyncio.wait_for`, `TaskGroup`, anything that captures the current task)
entered before the first await cancelled the *request* when it expired. The predict never saw its
TimeoutError and went on running; the client got a 503 `shutting_down` from a server that was not shutting
down. Now each call runs in its own task from its first step. A real `myelin serve` on 127.0.0.1, stopped by pid.
"""

from __future__ import annotations

import httpx

PREDICTOR = """
import asyncio


class Predictor:
    def __init__(self, config):
        pass

    async def predict(self, payload):
        mode = payload["mode"]
        if mode == "timeout":  # the idiom: bound one slow step, answer something else when it is too slow
            try:
                async with asyncio.timeout(0.05):
                    await asyncio.sleep(5)
            except TimeoutError:
                return {"timed_out": True}
            return {"timed_out": False}
        if mode == "wait_for":
            try:
                return {"value": await asyncio.wait_for(asyncio.sleep(5, 1), 0.05)}
            except asyncio.TimeoutError:
                return {"timed_out": True}
        if mode == "task":
            first = asyncio.current_task()
            await asyncio.sleep(0)
            return {"same_task": first is asyncio.current_task()}
        if mode == "many_sleeps":
            for _ in range(2000):
                await asyncio.sleep(0)
            return {"slept": 2000}
        if mode.startswith("later-"):  # raised after the first await, from predict's own task
            await asyncio.sleep(0)
            mode = mode[len("later-"):]
        raise {"stop": StopIteration, "exit": SystemExit, "interrupt": KeyboardInterrupt,
               "cancelled": asyncio.CancelledError}.get(mode, ValueError)(mode)
"""


def test_timeouts_and_current_task_inside_an_async_predict(tmp_path, start_server):
    folder = tmp_path / "timed"
    folder.mkdir()
    (folder / "api.yaml").write_text("kind: RealtimeAPI\nname: timed\nserving:\n  timeout: 10s\n")
    (folder / "predictor.py").write_text(PREDICTOR)
    server = start_server("serve", str(folder))
    url = f"{server.base}/timed"
    with httpx.Client(timeout=15) as client:
        for mode, expected in (("timeout", {"timed_out": True}), ("wait_for", {"timed_out": True}),
                               ("task", {"same_task": True}), ("many_sleeps", {"slept": 2000})):
            r = client.post(url, json={"mode": mode})
            assert (r.status_code, r.json()) == (200, expected), (mode, r.text)
        # What predict raises, at its first step or later, is its failure (a JSON 500); never the server's.
        for mode in ("stop", "exit", "interrupt", "cancelled", "later-stop", "later-exit", "later-interrupt",
                     "later-cancelled"):
            r = client.post(url, json={"mode": mode})
            assert (r.status_code, r.json()["error"]["type"]) == (500, "predictor_failure"), (mode, r.text)
        # Nothing left running: the server is ready, not stuck behind a predict that never saw its timeout.
        assert client.get(f"{server.base}/readyz").json()["status"] == "ready"
