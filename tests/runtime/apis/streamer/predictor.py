"""A streaming predictor for the tests, scripted by its payload; one class per generator kind.

`{"steps": [...], "marker": path}`: each step is `{"yield": value}` (`"times": n` yields it n times), `{"sleep": s}`, `{"wait": path}`
(wait until the file exists, then yield `{"waited": true}`; false after 20 s), `{"raise": "predictor"}`
(a PredictorError 422), `{"raise": "timeout"}` (a TimeoutError) or `{"raise": "crash"}` (a RuntimeError), `{"unencodable": true}`
(yield an object no framing can encode), or `{"forever": gap}` (yield 0, 1, 2, ... with `gap` seconds between them). The generator writes "closed" to `marker` in its `finally`.
"""

import asyncio
import os
import time

from myelin.errors import PredictorError

WAIT_S = 20


def _fail(kind):
    if kind == "predictor":
        raise PredictorError(422, "this item is refused")
    if kind == "timeout":  # the predictor's own TimeoutError (e.g. a client library's): a failure, not a 504
        raise TimeoutError("the generator's own call timed out")
    raise RuntimeError("generator exploded")


def _closed(payload):
    if isinstance(payload, dict) and payload.get("marker"):
        with open(payload["marker"], "w") as f:
            f.write("closed")


class SyncStreamer:
    def __init__(self, config):
        pass

    def predict(self, payload):
        try:
            for step in payload["steps"]:
                if "yield" in step:
                    for _ in range(step.get("times", 1)):
                        yield step["yield"]
                elif "sleep" in step:
                    time.sleep(step["sleep"])
                elif "wait" in step:
                    deadline = time.monotonic() + WAIT_S
                    while not os.path.exists(step["wait"]) and time.monotonic() < deadline:
                        time.sleep(0.01)
                    yield {"waited": os.path.exists(step["wait"])}
                elif "raise" in step:
                    _fail(step["raise"])
                elif "unencodable" in step:
                    yield object()
                elif "forever" in step:
                    n = 0
                    while True:
                        yield n
                        n += 1
                        time.sleep(step["forever"])
        finally:
            _closed(payload)


class AsyncStreamer:
    def __init__(self, config):
        pass

    async def predict(self, payload):
        try:
            for step in payload["steps"]:
                if "yield" in step:
                    for _ in range(step.get("times", 1)):
                        yield step["yield"]
                elif "sleep" in step:
                    await asyncio.sleep(step["sleep"])
                elif "wait" in step:
                    deadline = time.monotonic() + WAIT_S
                    while not os.path.exists(step["wait"]) and time.monotonic() < deadline:
                        await asyncio.sleep(0.01)
                    yield {"waited": os.path.exists(step["wait"])}
                elif "raise" in step:
                    _fail(step["raise"])
                elif "unencodable" in step:
                    yield object()
                elif "forever" in step:
                    n = 0
                    while True:
                        yield n
                        n += 1
                        await asyncio.sleep(step["forever"])
        finally:
            _closed(payload)
