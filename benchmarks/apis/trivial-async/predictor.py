class Predictor:
    """Returns a constant: the cost measured is the job machinery's, not the model's."""

    def __init__(self, config):
        self.config = config

    def predict(self, payload):
        return {"ok": True}
