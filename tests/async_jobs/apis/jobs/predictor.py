"""A predictor for the AsyncAPI tests: echoes, computes, sleeps, fails or kills its own process on request."""

import os
import time

from myelin.errors import PredictorError


class Predictor:
    def __init__(self, config):
        marker = os.environ.get("JOBS_LOADED_MARKER")
        if marker:  # which processes loaded the predictor (a gateway must not)
            with open(marker, "a") as f:
                f.write(f"{os.getpid()}\n")

    def predict(self, payload, query_params, headers):
        if not isinstance(payload, dict):
            return payload  # text -> text, bytes -> bytes
        if "sleep" in payload:
            time.sleep(payload["sleep"])
        if payload.get("die"):
            os._exit(9)  # the worker dies mid-job, as on a node loss
        if "die_once" in payload:
            if not os.path.exists(payload["die_once"]):
                open(payload["die_once"], "w").close()
                os._exit(9)
        if payload.get("fail") == "predictor_error":
            raise PredictorError(422, "asked to fail")
        if payload.get("fail") == "exception":
            raise ValueError("a detail that stays in the log")
        if "n" in payload:
            return {"n": payload["n"], "square": payload["n"] ** 2}
        if payload.get("request"):
            return {"query": dict(query_params), "trace": headers.get("x-trace"), "key": headers.get("x-api-key")}
        return payload
