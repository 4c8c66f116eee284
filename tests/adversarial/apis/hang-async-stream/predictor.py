"""`{"hang": "before" | "after" | "no", "s": seconds}`: an async generator whose step waits `s` seconds and
shrugs off the cancellation the server sends at its deadline (a careless `except: pass`)."""

import asyncio
import time


async def _stubborn_sleep(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            await asyncio.sleep(end - time.monotonic())
        except asyncio.CancelledError:
            pass


class Predictor:
    def __init__(self, config):
        pass

    async def predict(self, payload):
        hang = payload.get("hang", "no")
        seconds = float(payload.get("s", 0))
        if hang == "before":
            await _stubborn_sleep(seconds)
        yield {"item": 0}
        if hang == "after":
            await _stubborn_sleep(seconds)
        yield {"item": 1}
        yield {"item": 2}
