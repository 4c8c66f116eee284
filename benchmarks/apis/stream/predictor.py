"""Yields `payload["n"]` small dicts: a sync generator (Predictor) and an async one (AsyncPredictor)."""


def item(i: int) -> dict:
    return {"i": i, "token": " word"}


class Predictor:
    def __init__(self, config):
        self.config = config

    def predict(self, payload):
        for i in range(payload["n"]):
            yield item(i)


class AsyncPredictor(Predictor):
    async def predict(self, payload):
        for i in range(payload["n"]):
            yield item(i)
