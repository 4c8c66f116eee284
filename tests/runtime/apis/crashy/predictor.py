import os
import time


class Predictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        if payload.get("crash"):
            os._exit(17)  # a native crash, as a segfaulting model would
        if payload.get("sleep"):
            time.sleep(payload["sleep"])
        return {"pid": os.getpid()}
