"""The plain FastAPI baseline with a trivial handler: same shape as fastapi_kmeans, no model.

Compared with Myelin serving benchmarks/apis/trivial (batching off) to show what
Myelin's admission, metrics and logging layers cost.
"""

from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()


class Features(BaseModel):
    features: list[float]


@app.get("/healthz")
def healthz():
    return {"ok": True}


@app.post("/predict")
def predict(body: Features):
    return {"cluster": 0}
