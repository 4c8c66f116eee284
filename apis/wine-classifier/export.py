"""Train the wine classifier and write its model files to model/ (committed; upload them to S3 to serve from there).

    python apis/wine-classifier/export.py          # from the repository root, or anywhere

The model is a scikit-learn multinomial logistic regression on the wine data set that ships with
scikit-learn (178 wines, 13 measurements, 3 cultivars), exported as plain JSON: the predictor needs
only numpy to run it, and the files say exactly what the model is.

    model/config.json    feature names, class names, the standardisation (mean, scale)
    model/weights.json   coefficients and intercepts
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sklearn.datasets import load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).resolve().parent


def feature_name(raw: str) -> str:
    return raw.replace("/", "_")  # 'od280/od315_of_diluted_wines' is awkward as a JSON key


def export(out: Path) -> dict:
    data = load_wine()
    scaler = StandardScaler().fit(data.data)
    model = LogisticRegression(max_iter=5000, C=1.0).fit(scaler.transform(data.data), data.target)
    config = {
        "model": "multinomial logistic regression on standardised features",
        "features": [feature_name(n) for n in data.feature_names],
        "classes": [str(n) for n in data.target_names],
        "mean": [round(float(v), 10) for v in scaler.mean_],
        "scale": [round(float(v), 10) for v in scaler.scale_],
    }
    weights = {
        "coef": [[round(float(v), 10) for v in row] for row in model.coef_],
        "intercept": [round(float(v), 10) for v in model.intercept_],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    (out / "weights.json").write_text(json.dumps(weights, indent=1) + "\n")
    return {"train_accuracy": float(model.score(scaler.transform(data.data), data.target))}


if __name__ == "__main__":
    stats = export(HERE / "model")
    print(f"wrote {HERE / 'model'}: training accuracy {stats['train_accuracy']:.3f}")
    sys.exit(0)
