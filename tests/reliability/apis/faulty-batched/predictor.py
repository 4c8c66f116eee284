class Predictor:
    def __init__(self, config):
        pass

    def predict(self, payloads):
        if any(p.get("mode") == "stopiteration" for p in payloads):
            return next(iter([]))
        if any(p.get("mode") == "systemexit" for p in payloads):
            raise SystemExit(1)
        return [{"ok": True} for _ in payloads]
