import time

VERSION = 1


class Predictor:
    def __init__(self, config):
        self.tag = config.get("tag")

    def predict(self, payload):
        time.sleep(0.005)  # keep a request or two in flight when traffic switches
        return {"version": VERSION, "tag": self.tag}
