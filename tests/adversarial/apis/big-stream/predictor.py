ITEM = "x" * 1_000_000


class Predictor:
    def __init__(self, config):
        pass

    async def predict(self, payload):
        for _ in range(int(payload.get("items", 100))):
            yield ITEM
