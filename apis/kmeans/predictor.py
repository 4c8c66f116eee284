"""K-Means: one 2-D point in, the index of its nearest of 100 centroids out.

The model is the one of the well-known Rust-vs-Python serving benchmark: scikit-learn
`KMeans(n_clusters=100)` fit on 2-feature `make_blobs` data, everything seeded, so
every build and every process gets the same centroids. It is produced by
`train.py` into `model/kmeans.joblib` (git-ignored) and re-created here on load
when that file is missing, stale or unreadable: nothing is downloaded.

Batching is on in api.yaml: `predict` receives a list of payloads and returns a
list of results of the same length and order. The points are stacked into one
array and labelled with one vectorised nearest-centroid search over the fitted
model's `cluster_centers_` (the same labels as `KMeans.predict`, without its
per-call validation overhead; the tests check both agree).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import joblib
import numpy as np
import sklearn
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from myelin.errors import PredictorError

HERE = Path(__file__).resolve().parent
DEFAULTS = {
    "model_path": "model/kmeans.joblib",
    "n_clusters": 100,
    "n_features": 2,
    "n_samples": 10_000,
    "seed": 42,
}
_NUMBER = (int, float)


def params_from(config) -> dict:
    params = {**DEFAULTS, **(config or {})}
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown kmeans config key(s): {', '.join(sorted(unknown))}")
    return params


def _training_params(params: dict) -> dict:
    return {key: params[key] for key in ("n_clusters", "n_features", "n_samples", "seed")}


def train(params: dict) -> KMeans:
    """Deterministic: same params -> same data -> same centroids."""
    X, _ = make_blobs(
        n_samples=params["n_samples"],
        centers=params["n_clusters"],
        n_features=params["n_features"],
        random_state=params["seed"],
    )
    return KMeans(n_clusters=params["n_clusters"], n_init=1, random_state=params["seed"]).fit(X)


def save(model: KMeans, params: dict, path: Path) -> None:
    """Write atomically, so processes starting together never read a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    artifact = {"sklearn_version": sklearn.__version__, "params": _training_params(params), "model": model}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            joblib.dump(artifact, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_or_train(params: dict, base: Path = HERE) -> KMeans:
    """The saved model when it matches these params and this scikit-learn, else a fresh fit (saved if possible)."""
    path = (base / params["model_path"]).resolve()
    try:
        artifact = joblib.load(path)
        if (
            isinstance(artifact, dict)
            and artifact.get("sklearn_version") == sklearn.__version__
            and artifact.get("params") == _training_params(params)
            and isinstance(artifact.get("model"), KMeans)
        ):
            return artifact["model"]
    except Exception:  # missing, truncated or from an incompatible version: rebuild it
        pass
    model = train(params)
    try:
        save(model, params, path)
    except OSError:
        pass  # a read-only image: serve the fresh in-memory model anyway
    return model


def nearest_centroid(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the closest centre for each row (squared Euclidean distance)."""
    diff = points[:, None, :] - centers[None, :, :]
    return np.einsum("ijk,ijk->ij", diff, diff).argmin(axis=1)


class Predictor:
    def __init__(self, config):
        self.params = params_from(config)
        self.model = load_or_train(self.params)
        self.centers = np.ascontiguousarray(self.model.cluster_centers_, dtype=np.float64)
        self.n_features = self.centers.shape[1]

    def _point(self, payload) -> list:
        if not isinstance(payload, dict) or "features" not in payload:
            raise PredictorError(400, f'expected a JSON object {{"features": [x, y]}}, got {_short(payload)}')
        features = payload["features"]
        if not isinstance(features, list) or len(features) != self.n_features:
            raise PredictorError(
                400, f'"features" must be a list of {self.n_features} numbers, got {_short(features)}'
            )
        for value in features:
            if type(value) not in _NUMBER or not math.isfinite(value):  # rejects bools and strings too
                raise PredictorError(
                    400, f'"features" must be a list of {self.n_features} finite numbers, got {_short(features)}'
                )
        return features

    def predict(self, payload):
        # With batching (api.yaml) the runtime hands a list of payloads; a single
        # object is accepted too so the class also works with batching turned off.
        if isinstance(payload, dict):
            (result,) = self.predict([payload])
            if isinstance(result, PredictorError):
                raise result
            return result
        if not isinstance(payload, list):
            raise PredictorError(400, f'expected a JSON object {{"features": [x, y]}}, got {_short(payload)}')
        if not payload:
            return []
        # A bad payload fails only its own request: its slot in the results holds the error.
        points, errors = [], {}
        for i, p in enumerate(payload):
            try:
                points.append(self._point(p))
            except PredictorError as err:
                errors[i] = err
        labels = iter(nearest_centroid(np.array(points, dtype=np.float64), self.centers).tolist() if points else [])
        return [errors[i] if i in errors else {"cluster": next(labels)} for i in range(len(payload))]


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
