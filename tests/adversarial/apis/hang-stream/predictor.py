"""`{"hang": "before" | "after" | "no", "s": seconds}`: a generator whose next() blocks (time.sleep: a thread
cannot be interrupted) for `s` seconds before or after its first item; "no" streams three items at once."""

import time


class Predictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        hang = payload.get("hang", "no")
        seconds = float(payload.get("s", 0))
        if hang == "before":
            time.sleep(seconds)
        yield {"item": 0}
        if hang == "after":
            time.sleep(seconds)
        yield {"item": 1}
        yield {"item": 2}
