from helper import greet


class Model:
    def __init__(self, config):
        self.greeting = config["greeting"]

    def predict(self, payload):
        return greet(self.greeting, payload)
