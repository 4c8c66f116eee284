"""Hyperparameter search: a grid of SVM parameters in, the best cross-validated accuracy out.

Each job trains `len(C) × len(gamma) × folds` support-vector classifiers on the 1,797 8×8 digit
images that ship inside scikit-learn (nothing is downloaded): a few seconds for the sample grid,
minutes for a large one. That is work for an AsyncAPI, not for a request held open meanwhile.
"""

from __future__ import annotations

import math
import time

from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC

from myelin.errors import PredictorError


def positive_numbers(payload: dict, name: str) -> list[float]:
    values = payload.get(name)
    if not isinstance(values, list) or not values or len(values) > 20:
        raise PredictorError(400, f"{name!r} must be a list of 1 to 20 positive numbers, like [1, 10]")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise PredictorError(400, f"{name!r} must hold positive numbers, got {v!r}")
    return [float(v) for v in values]


class Predictor:
    def __init__(self, config):
        digits = load_digits()
        self.x, self.y = digits.data, digits.target
        self.max_fits = int(config.get("max_fits", 120))

    def predict(self, payload):
        if not isinstance(payload, dict):
            raise PredictorError(400, 'expected a JSON object like {"C": [1, 10], "gamma": [0.0001, 0.001], "folds": 3}')
        c_values, gammas = positive_numbers(payload, "C"), positive_numbers(payload, "gamma")
        folds = payload.get("folds", 3)
        if isinstance(folds, bool) or not isinstance(folds, int) or not 2 <= folds <= 10:
            raise PredictorError(400, f"'folds' must be a whole number from 2 to 10, got {folds!r}")
        fits = len(c_values) * len(gammas) * folds
        if fits > self.max_fits:
            raise PredictorError(400, f"the grid needs {fits} fits; at most {self.max_fits} per job (predictor.config.max_fits)")
        started = time.perf_counter()
        search = GridSearchCV(SVC(kernel="rbf"), {"C": c_values, "gamma": gammas}, cv=folds, n_jobs=1)
        search.fit(self.x, self.y)
        results = [
            {"C": params["C"], "gamma": params["gamma"], "accuracy": round(float(score), 4)}
            for params, score in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"])
        ]
        return {
            "best": {"C": search.best_params_["C"], "gamma": search.best_params_["gamma"],
                     "accuracy": round(float(search.best_score_), 4)},
            "results": results,
            "fits": fits,
            "seconds": round(time.perf_counter() - started, 2),
        }
