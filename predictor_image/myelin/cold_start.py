"""`myelin cold-start`: the answer for requests held past their deadline while an API scales from zero.

In the cluster, KEDA's interceptor holds a request for an API that has no ready replica. When the API is not
ready within the route's readiness timeout (its serving.timeout), the interceptor hands the request to this
server (the route's `coldStart.fallback`) instead of answering a plain-text 504 itself. This server answers in
the contract's shape: 503, `{"error": {"type": "not_ready", ...}}`, `Retry-After` and `X-Request-ID`.

Retry-After is an estimate of the rest of the cold start: the mean of the API's measured cold starts in pods seen
over the last day (`myelin_cold_start_duration_seconds` in the cluster's Prometheus) less the time this request already
waited; before any cold start was measured (or without Prometheus), the stack's estimate from MYELIN_COLD_START_APIS.
It is at least MIN_RETRY_AFTER_S and at most `contract.MAX_RETRY_AFTER_S` (ten minutes), whatever Prometheus says.

MYELIN_COLD_START_APIS: JSON list of {"name", "endpoint", "timeout_seconds", "estimate_seconds"}.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from . import contract
from .errors import retry_after_seconds
from .http_io import new_request_id, send_error

APIS_ENV = "MYELIN_COLD_START_APIS"
PROMETHEUS_ENV = "MYELIN_PROMETHEUS_URL"
CACHE_SECONDS = 30.0
QUERY_TIMEOUT_S = 2.0
MIN_RETRY_AFTER_S = 5


@dataclass(frozen=True)
class ColdStartApi:
    name: str
    endpoint: str
    timeout_seconds: float
    estimate_seconds: float


def read_apis(raw: str) -> dict[str, ColdStartApi]:
    """endpoint -> API, from MYELIN_COLD_START_APIS; a ValueError names what is wrong."""
    try:
        items = json.loads(raw)
        apis = [ColdStartApi(str(i["name"]), str(i["endpoint"]), float(i["timeout_seconds"]),
                             float(i["estimate_seconds"])) for i in items]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{APIS_ENV}: expected a JSON list of {{name, endpoint, timeout_seconds, "
                         f"estimate_seconds}} ({err})") from None
    return {a.endpoint: a for a in apis}


def mean_cold_start_query(api: str) -> str:
    """Mean cold start of `api` over the pods seen in the last day.

    Each replica counts its own cold start once, before Prometheus first scrapes it (it is woken by the very
    requests it then serves), so the series are born at their final value and increase() would see nothing:
    the last value of each pod's sum and count is summed instead."""
    metric, label = contract.COLD_START_DURATION, contract.LABEL_API
    return (f'sum(last_over_time({metric}_sum{{{label}="{api}"}}[1d])) / '
            f'sum(last_over_time({metric}_count{{{label}="{api}"}}[1d]))')


class ColdStartApp:
    """ASGI: /healthz and /readyz answer 200; any other request is a held request past its deadline."""

    def __init__(self, apis: dict[str, ColdStartApi], prometheus_url: str | None):
        self.apis = apis
        self.prometheus_url = prometheus_url.rstrip("/") if prometheus_url else None
        self._estimates: dict[str, tuple[float, float | None]] = {}  # api -> (fetched at, mean seconds)
        self._client: httpx.AsyncClient | None = None

    async def measured(self, api: str) -> float | None:
        """Mean measured cold start of `api` over the last day, cached; None when unknown."""
        cached = self._estimates.get(api)
        if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        value = None
        if self.prometheus_url:
            if self._client is None:
                self._client = httpx.AsyncClient(timeout=QUERY_TIMEOUT_S)
            try:
                r = await self._client.get(f"{self.prometheus_url}/api/v1/query",
                                           params={"query": mean_cold_start_query(api)})
                result = r.json()["data"]["result"]
                if result:
                    number = float(result[0]["value"][1])
                    value = number if math.isfinite(number) and number > 0 else None
            except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
                value = None
        self._estimates[api] = (time.monotonic(), value)
        return value

    async def retry_after(self, api: ColdStartApi) -> int:
        mean = await self.measured(api.name)
        estimate = mean if mean is not None else api.estimate_seconds
        return retry_after_seconds(max(MIN_RETRY_AFTER_S, estimate - api.timeout_seconds))

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self._client is not None:
                        await self._client.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        request_id = next((v.decode("latin-1")[:128] for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = request_id or new_request_id()
        path = scope["path"]
        if path in (contract.HEALTH_PATH, contract.READY_PATH):
            body = orjson.dumps({"status": "ok"})
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        api = self.apis.get(path) or next((a for e, a in self.apis.items() if path.startswith(e + "/")), None)
        if api is None:
            await send_error(send, 404, "not_found", f"no API at {path[:200]}", request_id)
            return
        retry = await self.retry_after(api)
        await send_error(send, 503, "not_ready", (
            f"API {api.name} is starting (scaled to zero) and was not ready within serving.timeout "
            f"({api.timeout_seconds:g}s); retry in about {retry}s"), request_id, [(b"retry-after", str(retry).encode())])


def app_from_env(environ: dict[str, str] | None = None) -> ColdStartApp:
    env = os.environ if environ is None else environ
    return ColdStartApp(read_apis(env.get(APIS_ENV, "[]")), env.get(PROMETHEUS_ENV) or None)


def serve(host: str, port: int, settings: Any) -> int:
    import uvicorn

    from .process import uvicorn_config

    try:
        app = app_from_env()
    except ValueError as err:
        print(f"myelin cold-start: {err}", file=sys.stderr, flush=True)
        return 2
    config = uvicorn_config(app, host, port, settings)
    asyncio.run(uvicorn.Server(config).serve())
    return 0

