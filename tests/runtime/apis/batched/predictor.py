import threading
import time


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
        return [{"i": p["i"], "batch_size": len(payloads), "call": call} for p in payloads]
