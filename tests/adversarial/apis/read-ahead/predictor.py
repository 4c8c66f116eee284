"""Sync generators scripted by the payload, for tests/adversarial/test_attack_read_ahead.py.

`{"mode": ..., "n": items before the end (default: forever), "gap": seconds per step, "tag": name, "marker": path}`.
Modes: "fast" (`{"i": i}` items), "block" (then block in next() until the file `release` exists), "badencode" (then a str subclass whose encode() raises LookupError),
"cancelled" (then raise asyncio.CancelledError: the predictor's own), "yield_in_finally" (a `finally` that yields:
closing it raises RuntimeError), "raise_in_finally" (a `finally` that raises). The `finally` appends `tag` to
`marker`, once per run of it.
"""

import asyncio
import os
import time


class Unencodable(str):
    """A str whose encode() fails with an error that is neither TypeError nor ValueError."""

    def encode(self, *args, **kwargs):
        raise LookupError("no codec for this item")


class Predictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        mode = payload.get("mode", "fast")
        n = payload.get("n")
        gap = float(payload.get("gap", 0))
        i = 0
        try:
            while n is None or i < n:
                if gap:
                    time.sleep(gap)
                yield {"i": i}
                i += 1
            if mode == "block":
                while not os.path.exists(payload["release"]):
                    time.sleep(0.01)
                yield {"released": True}
            elif mode == "badencode":
                yield Unencodable("abc")
            elif mode == "cancelled":
                raise asyncio.CancelledError("the predictor's own cancellation")
        finally:
            if payload.get("marker"):
                with open(payload["marker"], "a") as f:
                    f.write(f"{payload.get('tag')}\n")
            if mode == "yield_in_finally":
                yield {"in": "finally"}
            if mode == "raise_in_finally":
                raise RuntimeError("finally exploded")
