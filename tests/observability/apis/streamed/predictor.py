import time


class Predictor:
    def __init__(self, config):
        self.items = int(config.get("items", 5))
        self.first_item_s = float(config.get("first_item_s", 0.05))
        self.gap_s = float(config.get("gap_s", 0.02))

    def predict(self, payload):
        time.sleep(self.first_item_s)  # the time to first item the runtime measures
        for i in range(self.items):
            if i:
                time.sleep(self.gap_s)
            yield {"item": i}
