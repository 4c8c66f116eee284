"""BentoML service with adaptive batching on (`@bentoml.api(batchable=True)`), as BentoML's docs describe.

POST /predict  {"features": [[x, y]]}  ->  [i]
Batching stacks the (1, 2) inputs along dim 0 and splits the outputs back per request.
Run (in its own virtualenv): bentoml serve service:KMeans --host 127.0.0.1 --port P
Batch limits come from the environment (the harness copies Myelin's kmeans settings).
"""

import os
import sys
from pathlib import Path

import bentoml
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import kmeans_model  # noqa: E402

MAX_BATCH_SIZE = int(os.environ.get("BENCH_MAX_BATCH_SIZE", "64"))
MAX_LATENCY_MS = int(os.environ.get("BENCH_MAX_LATENCY_MS", "10000"))


@bentoml.service(workers=1, traffic={"timeout": 60})
class KMeans:
    def __init__(self) -> None:
        self.model = kmeans_model.load()

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.model.predict(features)
