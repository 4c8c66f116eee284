"""Handwritten digit classifier: raw image bytes in, digit out.

The request body is the image itself (PNG, JPEG, GIF, BMP, WebP... anything Pillow
reads), sent with an image content type, so the runtime hands `predict` the raw
`bytes`. A multipart upload (`curl -F image=@digit.png`) works too.

The model is an SVM trained when the predictor loads (a quarter of a second) on
scikit-learn's bundled `load_digits` set: 8x8 grayscale images with values 0..16,
ink bright on a dark background. Incoming images are converted to grayscale,
inverted when they are dark ink on a light background (judged by the border),
area-averaged down to 8x8 and scaled to 0..16.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError
from sklearn.calibration import CalibratedClassifierCV
from sklearn.datasets import load_digits
from sklearn.svm import SVC

from myelin.errors import PredictorError

SIDE = 8  # load_digits images are 8x8
MAX_PIXELS = 4096 * 4096  # refuse decompression bombs long before Pillow's own limit


def train(random_state: int = 0):
    digits = load_digits()
    model = CalibratedClassifierCV(SVC(gamma=0.001, random_state=random_state), ensemble=False)
    model.fit(digits.data, digits.target)
    return model


def image_bytes(payload) -> bytes:
    """The image's bytes from a raw body or a multipart form's first file field."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload)
    if hasattr(payload, "values"):  # a form (multipart: field name -> UploadFile)
        for value in payload.values():
            file = getattr(value, "file", None)  # starlette UploadFile in a multipart form
            if file is not None:
                file.seek(0)
                return file.read()
    raise PredictorError(
        400,
        f"expected the image itself as the request body (e.g. Content-Type: image/png), got {type(payload).__name__}",
    )


def to_features(data: bytes) -> np.ndarray:
    """Image bytes -> a 1x64 float row on the load_digits scale (0 = background, 16 = ink)."""
    if not data:
        raise PredictorError(400, "not an image: the request body is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise PredictorError(400, f"image too large: {img.width}x{img.height} pixels")
                img.seek(0)  # first frame of an animation
                gray = img.convert("L")  # decodes; alpha is dropped
    except PredictorError:
        raise
    except UnidentifiedImageError:
        raise PredictorError(400, "not an image: unrecognised format (send PNG, JPEG, GIF, BMP, WebP, ...)") from None
    except Exception as err:  # truncated data, decompression bombs, ...
        raise PredictorError(400, f"not an image: {type(err).__name__}: {err}") from None
    pixels = np.asarray(gray, dtype=np.float64)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if border.mean() > 127.5:  # dark ink on light paper: flip to the data set's polarity
        gray = Image.fromarray(255 - np.asarray(gray))
    small = gray.resize((SIDE, SIDE), Image.Resampling.BOX)  # area average, like the data set's binning
    return (np.asarray(small, dtype=np.float64) * (16.0 / 255.0)).reshape(1, SIDE * SIDE)


class Predictor:
    def __init__(self, config):
        self.model = train(random_state=int(config.get("random_state", 0)))
        self.classes = [int(c) for c in self.model.classes_]

    def predict(self, payload):
        x = to_features(image_bytes(payload))
        proba = self.model.predict_proba(x)[0]
        best = int(np.argmax(proba))
        return {
            "digit": self.classes[best],
            "probabilities": {str(c): round(float(p), 4) for c, p in zip(self.classes, proba)},
        }
