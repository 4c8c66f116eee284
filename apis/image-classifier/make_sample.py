"""Write sample.png: a load_digits image scaled up to 64x64, dark ink on white.

    python apis/image-classifier/make_sample.py [INDEX]

Also importable: `render_png(image_8x8, size=64, invert=True)` is used by the tests.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent


def render_png(image: np.ndarray, size: int = 64, invert: bool = True) -> bytes:
    """An 8x8 array on the 0..16 scale -> PNG bytes of a size x size grayscale picture."""
    pixels = np.clip(np.rint(np.asarray(image, dtype=np.float64) * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    if invert:
        pixels = 255 - pixels
    img = Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.NEAREST)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True)
    return out.getvalue()


def main() -> int:
    from sklearn.datasets import load_digits

    index = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    digits = load_digits()
    path = HERE / "sample.png"
    path.write_bytes(render_png(digits.images[index]))
    print(f"wrote {path}: digit {digits.target[index]} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
