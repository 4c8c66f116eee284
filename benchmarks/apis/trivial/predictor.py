class Predictor:
    """Returns a constant: the cost measured is the server's, not the model's."""

    def __init__(self, config):
        self.config = config

    def predict(self, payload):
        return {"cluster": 0}
