import threading
import time

from myelin.errors import PredictorError


class Predictor:
    def __init__(self, config):
        self.calls = 0
        self.lock = threading.Lock()

    def predict(self, payloads):
        assert isinstance(payloads, list)
        with self.lock:
            self.calls += 1
            call = self.calls
        time.sleep(max(p.get("sleep", 0) for p in payloads))
        if any(p.get("fail") for p in payloads):
            raise ValueError("a payload in this batch asked to fail")
        if any(p.get("short") for p in payloads):
            return payloads[:-1]
        return [PredictorError(422, f"payload {p['i']} is bad") if p.get("bad") else
                {"i": p["i"], "batch_size": len(payloads), "call": call} for p in payloads]
