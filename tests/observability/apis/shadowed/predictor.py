class Predictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        if isinstance(payload, dict) and payload.get("fail"):
            raise RuntimeError("asked to fail")  # a 500: a failed copy on the splitter's dashboard
        return {"ok": True}
