import time


class Predictor:
    def __init__(self, config):
        time.sleep(config["load_seconds"])

    def predict(self, payload):
        return {"loaded": True}
