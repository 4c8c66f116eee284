import asyncio
import math
import sys
import threading
import time

import numpy as np


class Custom(BaseException):
    """A BaseException that is neither SystemExit nor KeyboardInterrupt."""


RELEASE = threading.Event()  # set by mode=release: every `hang` returns


class Predictor:
    def __init__(self, config):
        self.config = config

    def predict(self, payload, query_params):
        mode = query_params.get("mode", "ok")
        if mode == "ok":
            return {"ok": True}
        if mode == "stopiteration":
            return next(iter([]))
        if mode == "generatorexit":
            raise GeneratorExit()
        if mode == "keyboardinterrupt":
            raise KeyboardInterrupt()
        if mode == "systemexit":
            raise SystemExit(3)
        if mode == "custom":
            raise Custom("custom base exception")
        if mode == "cancelled":
            raise asyncio.CancelledError()
        if mode == "hang":
            RELEASE.clear()
            RELEASE.wait(float(query_params.get("s", "30")))
            return {"hung": True}
        if mode == "release":
            RELEASE.set()
            return {"released": True}
        if mode == "print":
            for i in range(int(query_params.get("n", "20"))):
                print(f"predictor says {i}", end="" if i % 3 else "\n")
                sys.stdout.write("partial ")
                print("to stderr", file=sys.stderr)
            return {"printed": True}
        if mode == "surrogate":
            raise RuntimeError("bad text \ud800 in message")
        if mode == "views":
            a = np.arange(6, dtype=np.float64).reshape(2, 3)
            return {"column": a[:, 1], "transposed": a.T, "zero_d": np.array(2.5), "scalar": np.float32(0.5),
                    "strided": np.arange(10)[::3], "fortran": np.asfortranarray(a), "bool": np.bool_(True)}
        if mode == "nonfinite":
            return {"nan": float("nan"), "inf": math.inf, "array": np.array([1.0, np.nan, -np.inf])}
        raise ValueError(f"unknown mode {mode}")
