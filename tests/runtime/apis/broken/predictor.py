import math


class Predictor:
    def __init__(self, config):
        self.ratio = 1 / 0  # deliberately broken: fails at load

    def predict(self, payload):
        return payload
