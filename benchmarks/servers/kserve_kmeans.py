"""KServe's ModelServer with a custom Model, as KServe's docs describe (v1 protocol).

POST /v1/models/kmeans:predict  {"instances": [[x, y]]}  ->  {"predictions": [{"cluster": i}]}
Run (in its own virtualenv): python kserve_kmeans.py --http_port P --enable_grpc false
"""

import sys
from pathlib import Path

import numpy as np
import uvicorn
from kserve import Model, ModelServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import kmeans_model  # noqa: E402

# KServe's REST server binds 0.0.0.0 with no option to change it; the benchmark stays on loopback.
_config_init = uvicorn.Config.__init__


def _loopback_config(self, *args, **kwargs):
    kwargs["host"] = "127.0.0.1"
    _config_init(self, *args, **kwargs)


uvicorn.Config.__init__ = _loopback_config


class KMeansModel(Model):
    def __init__(self, name: str):
        super().__init__(name)
        self.model = None
        self.load()

    def load(self):
        self.model = kmeans_model.load()
        self.ready = True

    def predict(self, payload, headers=None):
        clusters = self.model.predict(np.asarray(payload["instances"]))
        return {"predictions": [{"cluster": int(c)} for c in clusters]}


if __name__ == "__main__":
    ModelServer().start([KMeansModel("kmeans")])
