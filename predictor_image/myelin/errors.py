"""Errors a request can end in, and the one JSON shape every error body takes."""

from __future__ import annotations

import math

import orjson

from .contract import MAX_RETRY_AFTER_S


class PredictorError(Exception):
    """Raise from `predict` to answer with your own 4xx status and message.

    `raise PredictorError(422, "text must not be empty")` gives the client
    `{"error": {"type": "predictor_error", "message": "text must not be empty", ...}}`
    with status 422. Any other exception becomes a 500 whose details stay in the log.
    """

    def __init__(self, status_code: int = 400, message: str = "bad request", error_type: str = "predictor_error"):
        if not 400 <= int(status_code) <= 499:
            raise ValueError(f"PredictorError status must be a 4xx code, got {status_code}")
        super().__init__(message)
        self.status_code = int(status_code)
        self.message = str(message)
        self.error_type = error_type


class HTTPError(Exception):
    """An error the server itself answers with (bad input, overload, timeout, ...)."""

    def __init__(self, status_code: int, error_type: str, message: str, headers: list[tuple[bytes, bytes]] | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.error_type = error_type
        self.message = message
        self.headers = headers or []


class ServerFault(HTTPError):
    """A 500 `internal` of the server's own making (e.g. a result it cannot encode): the client gets `message`,
    the log `log_message` with the `detail` (endpoint.handle_predict logs it)."""

    def __init__(self, message: str, log_message: str, detail: str):
        super().__init__(500, "internal", message)
        self.log_message = log_message
        self.detail = detail


def retry_after_seconds(seconds: float) -> int:
    """A computed Retry-After in whole seconds, clamped to [1, MAX_RETRY_AFTER_S] (NaN or infinite: the maximum)."""
    if not math.isfinite(seconds):
        return MAX_RETRY_AFTER_S
    return min(MAX_RETRY_AFTER_S, max(1, math.ceil(seconds)))


def retry_after(seconds: float) -> tuple[bytes, bytes]:
    """The `Retry-After` header for a computed wait (clamped: retry_after_seconds)."""
    return (b"retry-after", str(retry_after_seconds(seconds)).encode())


def overloaded(message: str = "server is at capacity, retry later") -> HTTPError:
    return HTTPError(503, "overloaded", message, [(b"retry-after", b"1")])


def error_body(error_type: str, message: str, request_id: str) -> bytes:
    return orjson.dumps({"error": {"type": error_type, "message": message, "request_id": request_id}})
