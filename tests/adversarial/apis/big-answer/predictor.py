class Predictor:
    """Answers with `size` bytes (the payload's, else the config's, else 8 MiB): what a client that never reads
    is given."""

    def __init__(self, config):
        self.answer = b"x" * int(config.get("size", 8 * 2**20))

    def predict(self, payload):
        size = payload.get("size") if isinstance(payload, dict) else None
        return self.answer if size is None else b"x" * int(size)
