"""Write model/kmeans.joblib for this API (the predictor also does this itself when the file is missing).

    python apis/kmeans/train.py          # from the repository root, or anywhere

Deterministic: the same api.yaml config always gives the same centroids.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from myelin.spec import load_api_spec  # noqa: E402
from predictor import load_or_train, params_from  # noqa: E402


def main() -> int:
    spec = load_api_spec(HERE)
    params = params_from(spec.predictor.config)
    path = (HERE / params["model_path"]).resolve()
    path.unlink(missing_ok=True)
    start = time.perf_counter()
    model = load_or_train(params, HERE)
    if not path.is_file():
        print(f"could not write {path}", file=sys.stderr)
        return 1
    print(f"wrote {path}: {model.n_clusters} centroids over {model.n_features_in_} features "
          f"in {time.perf_counter() - start:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
