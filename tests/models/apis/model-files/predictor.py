"""Lists model_dir: each file's size and MD5, read in blocks (a 200 MB model costs no memory)."""

import hashlib
from pathlib import Path


def describe(folder: Path) -> dict:
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest = hashlib.md5()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(2**20), b""):
                    digest.update(block)
            files[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "md5": digest.hexdigest()}
    return files


class Predictor:
    def __init__(self, config, model_dir):
        self.model_dir = model_dir
        self.files = describe(Path(model_dir))

    def predict(self, payload):
        return {"model_dir": self.model_dir, "files": self.files}
