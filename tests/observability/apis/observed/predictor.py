import time


class Predictor:
    def __init__(self, config):
        self.service_time = float(config.get("service_time", 0.1))

    def predict(self, payloads):
        time.sleep(self.service_time)  # one batch takes the same time whatever its size
        if any(isinstance(p, dict) and p.get("fail") for p in payloads):
            raise RuntimeError("asked to fail")  # a 500 for every request of this batch
        return [{"ok": True, "batch": len(payloads)} for _ in payloads]
