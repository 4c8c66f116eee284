"""The common baseline: a plain FastAPI endpoint calling scikit-learn's predict per request.

Written the way most tutorials do it: a pydantic body model, a sync handler (FastAPI runs
it in its thread pool), one `model.predict` per request.
Run: uvicorn benchmarks.servers.fastapi_kmeans:app --workers 1
"""

import sys
from pathlib import Path

import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import kmeans_model  # noqa: E402

model = kmeans_model.load()
app = FastAPI()


class Features(BaseModel):
    features: list[float]


@app.get("/healthz")
def healthz():
    return {"ok": True}


@app.post("/predict")
def predict(body: Features):
    cluster = model.predict(np.asarray([body.features]))[0]
    return {"cluster": int(cluster)}
