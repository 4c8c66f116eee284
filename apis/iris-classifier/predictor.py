"""Iris classifier: named flower measurements in, species out.

The model is trained when the predictor loads, from the iris data set that ships
inside scikit-learn (150 rows, well under a second): there is no model file to
build or keep, and nothing is downloaded.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from myelin.errors import PredictorError

# Request field names, in the column order of sklearn's iris data.
FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")


def train(random_state: int = 0):
    """Fit the classifier on the full bundled iris data set; returns (model, class names)."""
    data = load_iris()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=random_state))
    model.fit(data.data, data.target)
    return model, [str(name) for name in data.target_names]


def parse_features(payload) -> np.ndarray:
    """{"sepal_length": 5.1, ...} -> a 1x4 float array; PredictorError(400) naming what is wrong."""
    if not isinstance(payload, dict):
        raise PredictorError(
            400, f"expected a JSON object with the fields {', '.join(FEATURES)}; got {type(payload).__name__}"
        )
    missing = [name for name in FEATURES if name not in payload]
    if missing:
        raise PredictorError(400, f"missing feature(s): {', '.join(missing)} (expected {', '.join(FEATURES)})")
    row = []
    for name in FEATURES:
        value = payload[name]
        # bool is an int subclass in Python: refuse it, and refuse numeric strings too.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PredictorError(400, f"feature {name!r} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise PredictorError(400, f"feature {name!r} must be a finite number, got {value!r}")
        row.append(float(value))
    return np.array([row], dtype=np.float64)


class Predictor:
    def __init__(self, config):
        self.model, self.labels = train(random_state=int(config.get("random_state", 0)))
        self.probabilities = bool(config.get("probabilities", True))

    def predict(self, payload):
        x = parse_features(payload)
        proba = self.model.predict_proba(x)[0]
        best = int(np.argmax(proba))
        result = {"label": self.labels[best]}
        if self.probabilities:
            result["probabilities"] = {label: round(float(p), 6) for label, p in zip(self.labels, proba)}
        return result
