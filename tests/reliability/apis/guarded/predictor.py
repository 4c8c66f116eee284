class Predictor:
    """Accepts anything: whatever reaches predict is answered with its type."""

    def __init__(self, config):
        pass

    def predict(self, payload):
        return {"type": type(payload).__name__}
