"""Wine cultivar from 13 named chemical measurements; the model comes from `predictor.model_uri`.

The runtime fetches the model files (from S3 into its cache, or a local folder as it is) before
`__init__` and passes their folder as `model_dir`. They are two JSON files written by export.py:
`config.json` (feature and class names, standardisation) and `weights.json` (a multinomial
logistic regression), so inference is a few lines of numpy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from myelin.errors import PredictorError


class Predictor:
    def __init__(self, config, model_dir):
        folder = Path(model_dir)
        meta = json.loads((folder / "config.json").read_text())
        weights = json.loads((folder / "weights.json").read_text())
        self.features = list(meta["features"])
        self.classes = list(meta["classes"])
        self.mean = np.asarray(meta["mean"], dtype=np.float64)
        self.scale = np.asarray(meta["scale"], dtype=np.float64)
        self.coef = np.asarray(weights["coef"], dtype=np.float64)
        self.intercept = np.asarray(weights["intercept"], dtype=np.float64)
        n, k = len(self.features), len(self.classes)
        if self.mean.shape != (n,) or self.scale.shape != (n,) or self.coef.shape != (k, n) or self.intercept.shape != (k,):
            raise ValueError(f"model files in {folder} disagree: {n} features, {k} classes, coef {self.coef.shape}")
        self.probabilities = bool(config.get("probabilities", True))

    def _row(self, payload) -> np.ndarray:
        if not isinstance(payload, dict):
            raise PredictorError(400, f"expected a JSON object with the {len(self.features)} measurements "
                                      f"({', '.join(self.features)}); got {type(payload).__name__}")
        missing = [name for name in self.features if name not in payload]
        if missing:
            raise PredictorError(400, f"missing measurement(s): {', '.join(missing)}")
        row = []
        for name in self.features:
            value = payload[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise PredictorError(400, f"measurement {name!r} must be a finite number, got {value!r}")
            row.append(float(value))
        return np.asarray(row, dtype=np.float64)

    def predict(self, payload):
        logits = self.coef @ ((self._row(payload) - self.mean) / self.scale) + self.intercept
        proba = np.exp(logits - logits.max())
        proba /= proba.sum()
        best = int(np.argmax(proba))
        result = {"cultivar": self.classes[best]}
        if self.probabilities:
            result["probabilities"] = {c: round(float(p), 6) for c, p in zip(self.classes, proba)}
        return result
