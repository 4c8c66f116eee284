"""The one K-Means model every server in the benchmark serves.

100 centroids on 10,000 two-feature `make_blobs` points, everything seeded, fit the
same way as apis/kmeans/predictor.py (`train`): `KMeans(n_clusters, n_init=1,
random_state=seed)`. The parameters default to apis/kmeans/api.yaml's (seed 42); the
harness reads that file and passes them in BENCH_KMEANS_PARAMS (JSON), and it checks
that every server labels a set of probe points exactly as Myelin does.

The fitted model is cached under benchmarks/.work/ per scikit-learn version and
parameters (a pickle is only safe to load with the version that wrote it), so each
server's virtualenv loads or fits the same model.

    python benchmarks/kmeans_model.py        # fit (or load) and print the cache path
"""

from __future__ import annotations

import os
from pathlib import Path

import json

DEFAULT_PARAMS = {"n_clusters": 100, "n_features": 2, "n_samples": 10_000, "seed": 42}

WORK = Path(os.environ.get("BENCH_WORK", Path(__file__).resolve().parent / ".work"))

# Points the harness sends to every server to check they all answer alike.
PROBE_POINTS = [[-10.0 + 1.37 * i, 9.5 - 0.91 * i] for i in range(16)] + [[1.5, -2.25], [0.0, 0.0]]
# The payload point of the load test.
BENCH_POINT = [1.5, -2.25]


def params() -> dict:
    return {**DEFAULT_PARAMS, **json.loads(os.environ.get("BENCH_KMEANS_PARAMS") or "{}")}


def fit():
    from sklearn.cluster import KMeans
    from sklearn.datasets import make_blobs

    p = params()
    x, _ = make_blobs(
        n_samples=p["n_samples"], centers=p["n_clusters"], n_features=p["n_features"], random_state=p["seed"]
    )
    return KMeans(n_clusters=p["n_clusters"], n_init=1, random_state=p["seed"]).fit(x)


def cache_path() -> Path:
    import sklearn

    p = params()
    tag = "-".join(f"{k}{p[k]}" for k in sorted(DEFAULT_PARAMS))
    return WORK / f"kmeans-{tag}-sklearn-{sklearn.__version__}.joblib"


def load():
    """The fitted model, from the cache when present (written atomically otherwise)."""
    import joblib

    path = cache_path()
    if path.is_file():
        return joblib.load(path)
    model = fit()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    joblib.dump(model, tmp)
    os.replace(tmp, path)
    return model


def expected_clusters() -> list[int]:
    return [int(c) for c in load().predict(PROBE_POINTS)]


if __name__ == "__main__":
    load()
    print(cache_path())
