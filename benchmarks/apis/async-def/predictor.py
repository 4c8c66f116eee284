class Predictor:
    """Returns a constant from an `async def predict`: the cost measured is the server's, not the model's."""

    def __init__(self, config):
        self.config = config

    async def predict(self, payload):
        return {"cluster": 0}
