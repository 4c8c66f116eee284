import os
import time


class Predictor:
    def __init__(self, config):
        self.service_time = float(config.get("service_time", 0.1))

    def predict(self, payload):
        time.sleep(self.service_time)
        if isinstance(payload, dict) and payload.get("fail"):
            raise RuntimeError("asked to fail")  # the job fails (no retry)
        if isinstance(payload, dict) and payload.get("die"):
            os._exit(9)  # the process dies mid-job: started again after its visibility timeout, then dead-lettered
        return {"ok": True}
