from pathlib import Path


class Predictor:
    def __init__(self, config, model_dir):
        self.sizes = {p.name: p.stat().st_size for p in Path(model_dir).rglob("*") if p.is_file()}

    def predict(self, payload):
        return self.sizes
