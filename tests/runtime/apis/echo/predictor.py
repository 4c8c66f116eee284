import os
import time

import numpy as np
from starlette.responses import PlainTextResponse

from myelin.errors import PredictorError


class Predictor:
    def __init__(self, config):
        self.config = config

    def predict(self, payload, query_params):
        mode = query_params.get("mode", "echo")
        if mode == "sleep":
            time.sleep(float(query_params.get("s", "0.5")))
            return {"slept": True, "pid": os.getpid()}
        if mode == "boom":
            raise RuntimeError("secret internal detail")
        if mode == "reject":
            raise PredictorError(422, "payload rejected by the predictor")
        if mode == "numpy":
            return {"array": np.arange(3), "scalar": np.float32(1.5), "int": np.int64(7)}
        if mode == "list":
            return [1, 2, 3]
        if mode == "text":
            return "plain text"
        if mode == "bytes":
            return b"\x00\x01binary"
        if mode == "response":
            return PlainTextResponse("custom", status_code=201, headers={"x-custom": "yes"})
        if mode == "unencodable":
            return object()
        if mode == "type":
            return {"type": type(payload).__name__, "value": payload if not isinstance(payload, bytes) else payload.hex()}
        if mode == "form":
            return {"type": "form", "fields": {k: str(v) for k, v in payload.items()}}
        return {"echo": payload, "config": self.config}
