"""The ASGI application: predict endpoints on a lean hot path, control routes on FastAPI.

`MyelinApp` looks at the path first: a POST to an API endpoint goes straight to
that API's `ApiRuntime.handle`; everything else (health, readiness, metrics,
info, 404s) goes to a small FastAPI app. The same app serves one API in a
container (`myelin serve`) and every API on a laptop (`myelin local`).
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Any, Callable, Iterable

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from .errors import error_body
from .logs import RequestLog
from .metrics import CONTENT_TYPE, Metrics
from .endpoint import handle_predict
from .http_io import new_request_id
from .runtime import ApiRuntime, State
from .settings import Settings
from .spec import ApiSpec

SAMPLE_INTERVAL_S = 1.0


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _error_response(request: Request, status: int, kind: str, message: str,
                    headers: dict[str, str] | None = None) -> Response:
    """The contract's JSON error body from a control route, with the request id echoed or made."""
    rid = request.headers.get("x-request-id") or new_request_id()
    return Response(error_body(kind, message, rid), status_code=status, media_type="application/json",
                    headers={"x-request-id": rid, **(headers or {})})


class MyelinApp:
    def __init__(self, apis: Iterable[tuple[Path, ApiSpec]], *, processes: int | None = None,
                 log: RequestLog | None = None, metrics: Metrics | None = None,
                 on_loaded: Callable[[ApiRuntime], None] | None = None, watch: bool = False,
                 settings: Settings | None = None):
        self.log = log or RequestLog()
        self.settings = settings or Settings()
        self.metrics = metrics or Metrics()
        self.processes = processes
        self.on_loaded = on_loaded
        self.watch = watch
        self.runtimes: dict[str, ApiRuntime] = {}
        for folder, spec in apis:
            self.runtimes[spec.endpoint] = self.new_runtime(folder, spec)
        self.draining = False
        self.started = False
        self._tasks: set[asyncio.Task] = set()
        self.control = self._control_app()

    def new_runtime(self, folder: Path, spec: ApiSpec) -> ApiRuntime:
        if spec.kind == "AsyncAPI":
            from .asyncapi import AsyncApiRuntime

            return AsyncApiRuntime(folder, spec, self.metrics, self.log, self.processes, self.settings, self.spawn)
        return ApiRuntime(folder, spec, self.metrics.for_api(spec.name), self.log, self.processes)

    # ------------------------------------------------------------------ ASGI
    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            method = scope["method"]
            if method == "POST":
                runtime = self.runtimes.get(scope["path"])
                if runtime is not None:
                    if runtime.asynchronous:
                        await runtime.submit(scope, receive, send)
                    else:
                        await handle_predict(runtime, scope, receive, send)
                    return
            elif method == "GET":  # an AsyncAPI job: GET <endpoint>/<id>
                endpoint, _, job_id = scope["path"].rpartition("/")
                runtime = self.runtimes.get(endpoint)
                if runtime is not None and runtime.asynchronous:
                    await runtime.status(job_id, scope, receive, send)
                    return
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        await self.control(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def start(self) -> None:
        """Load predictors in the background: probes answer (readyz 503) while models load."""
        self.started = True
        for runtime in self.runtimes.values():
            self.spawn(self._start_runtime(runtime))
        self.spawn(self._sample_forever())
        if self.watch:
            from .reload import Reloader

            self.spawn(Reloader(self).run())

    async def _start_runtime(self, runtime: ApiRuntime) -> None:
        await runtime.start()
        # Move the model's (long-lived) objects out of the collector's reach: full collections then
        # scan only per-request garbage, which keeps them from stalling requests for tens of ms.
        gc.collect()
        gc.freeze()
        runtime.sample_metrics()
        if self.on_loaded is not None:
            self.on_loaded(runtime)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for runtime in self.runtimes.values():
            runtime.close()
        self.log.flush()

    async def _sample_forever(self) -> None:
        while True:
            self.sample_metrics()
            await asyncio.sleep(SAMPLE_INTERVAL_S)

    def sample_metrics(self) -> None:
        for runtime in self.runtimes.values():
            runtime.sample_metrics()

    # ------------------------------------------------------------------ drain
    def begin_drain(self) -> None:
        self.draining = True
        for runtime in self.runtimes.values():
            runtime.begin_drain()

    async def drain(self, timeout: float) -> bool:
        """Readiness 503 and new predictions refused at once; then wait for in-flight requests."""
        self.begin_drain()
        results = await asyncio.gather(*(r.drained(timeout) for r in self.runtimes.values()))
        return all(results)

    @property
    def ready(self) -> bool:
        if self.draining or not self.runtimes:
            return False
        states = [r.state for r in self.runtimes.values()]
        if any(s is State.LOADING for s in states):
            return False
        # Serving one API (a container): ready only if it loaded. Serving several (myelin local):
        # ready once all have finished loading and at least one serves.
        return any(s is State.READY for s in states) if len(states) > 1 else states[0] is State.READY

    # ------------------------------------------------------------------ control routes
    def _control_app(self) -> FastAPI:
        app = FastAPI(title="Myelin", version="1", docs_url="/docs", redoc_url=None)

        @app.get("/healthz", summary="Liveness: the server process answers.")
        async def healthz() -> Response:
            return _json({"status": "ok"})

        @app.get("/readyz", summary="Readiness: 200 once the predictor(s) loaded, 503 while loading or draining.")
        async def readyz() -> Response:
            ready = self.ready
            body = {"status": "ready" if ready else ("draining" if self.draining else "not_ready"),
                    "apis": {r.name: r.state.value for r in self.runtimes.values()}}
            return _json(body, 200 if ready else 503)

        @app.get("/metrics", summary="Prometheus metrics (text format).")
        async def metrics() -> Response:
            self.sample_metrics()
            return Response(self.metrics.exposition(), media_type=CONTENT_TYPE.decode())

        @app.get("/info", summary="The APIs served here, their state and effective spec.")
        async def info() -> Response:
            return _json({"apis": [dict(r.describe(), spec=r.spec.model_dump(mode="json")) for r in self.runtimes.values()]})

        for runtime in self.runtimes.values():
            if runtime.asynchronous:
                from .asyncapi.routes import document_job_routes

                document_job_routes(app, runtime)
            else:
                self._document_endpoint(app, runtime)

        async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
            kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
            message = {404: f"no API at {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}.get(
                exc.status_code, str(exc.detail))
            return _error_response(request, exc.status_code, kind, message, exc.headers)

        async def validation_error(request: Request, exc: RequestValidationError) -> Response:
            return _error_response(request, 400, "bad_request", str(exc.errors())[:500])

        app.add_exception_handler(StarletteHTTPException, http_error)
        app.add_exception_handler(RequestValidationError, validation_error)
        return app

    def _document_endpoint(self, app: FastAPI, runtime: ApiRuntime) -> None:
        """Describe the predict route in OpenAPI. Requests never reach this route: MyelinApp answers them first."""
        responses = {
            "400": {"description": "Malformed input"}, "401": {"description": "Missing or invalid API key"},
            "413": {"description": "Body too large"}, "500": {"description": "Predictor failure"},
            "503": {"description": "Overloaded, loading or draining"}, "504": {"description": "Timed out"},
        }
        body_schema = {"content": {
            "application/json": {"schema": {}}, "text/plain": {"schema": {"type": "string"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        }}

        async def documented(request: Request) -> Response:  # pragma: no cover - shadowed by the hot path
            return _json({})

        app.add_api_route(runtime.endpoint, documented, methods=["POST"], summary=f"Predict with {runtime.name}",
                          responses=responses, openapi_extra={"requestBody": body_schema}, name=runtime.name)
