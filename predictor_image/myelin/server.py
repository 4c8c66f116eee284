"""The ASGI application: predict endpoints on a lean hot path, control routes on FastAPI.

`MyelinApp` looks at the path first: a POST to an API endpoint goes straight to
that API's `ApiRuntime.handle`; everything else (health, readiness, metrics,
info, 404s) goes to a small FastAPI app. The same app serves one API in a
container (`myelin serve`) and every API on a laptop (`myelin local`).
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import orjson
from prometheus_client import Counter
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import PlainTextResponse, Response
from starlette.staticfiles import StaticFiles

from .cost import CostMeter
from .errors import error_body
from .logs import RequestLog
from .metrics import CONTENT_TYPE, Metrics
from .openapi_doc import DOCS_ASSETS_PATH, operation, swagger_assets, swagger_page
from .endpoint import handle_predict
from .http_io import MAX_REQUEST_ID, new_request_id
from .lifecycle import BodyBudget
from .contract import ENDPOINT_ALIASES_ENV, LABEL_API, LABEL_SPLITTER, PROTOCOL_MYELIN, SPLIT_REQUESTS
from .protocols import ProtocolRoutes
from .spec.protocols import protocols_of
from .runtime import ApiRuntime, State
from .settings import Settings
from .spec import ApiSpec

SAMPLE_INTERVAL_S = 1.0
#: After a drain's grace period, how long streams ended with an error event get to send it.
STREAM_END_S = 1.0


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _error_response(request: Request, status: int, kind: str, message: str,
                    headers: dict[str, str] | None = None) -> Response:
    """The contract's JSON error body from a control route, with the request's id (see `with_request_id`)."""
    rid = request.scope.get("myelin.request_id") or new_request_id()
    return Response(error_body(kind, message, rid), status_code=status, media_type="application/json",
                    headers=dict(headers or {}))


def with_request_id(app: Any) -> Any:
    """Every response of `app` carries X-Request-ID: the client's (at most 128 characters) or a new one."""

    async def wrapped(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        rid = b""
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                rid = value[:MAX_REQUEST_ID]
                break
        rid = rid or new_request_id().encode()
        scope["myelin.request_id"] = rid.decode("latin-1")

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", rid)]}
            await send(message)

        await app(scope, receive, send_with_id)

    return wrapped


REDACTED = "<redacted>"


def public_spec(spec: ApiSpec) -> dict[str, Any]:
    """The effective spec for /info: names of predictor.env and predictor.config, never their values."""
    data = spec.model_dump(mode="json")
    predictor = data.get("predictor", {})
    for section in ("env", "config"):
        if isinstance(predictor.get(section), dict):
            predictor[section] = {key: REDACTED for key in predictor[section]}
    return data


class MyelinApp:
    def __init__(self, apis: Iterable[tuple[Path, ApiSpec]], *, processes: int | None = None,
                 log: RequestLog | None = None, metrics: Metrics | None = None,
                 on_loaded: Callable[[ApiRuntime], None] | None = None,
                 expose_errors: bool = False, exit_when_stuck: bool = False,
                 exit_on_load_failure: int | None = None, settings: Settings | None = None):
        self.log = log or RequestLog()
        # Read once from MYELIN_* by the caller; run_app applies them again (apply_settings) before loading.
        self.settings = settings or Settings()
        # Load errors in /info: on a developer's machine (`myelin local`) yes; from a container, never
        # (they can carry connection strings and secrets; the log has them).
        self.expose_errors = expose_errors
        # A worker of a multi-process replica exits once stuck past serving.stuck_timeout (the supervisor
        # starts a fresh one); a single process fails /healthz instead and Kubernetes restarts the container.
        self.exit_when_stuck = exit_when_stuck
        # `myelin serve` (one API per container) exits with this code when its predictor cannot load, so
        # Kubernetes shows a crash loop with the reason instead of a pod that is never ready.
        self.exit_on_load_failure = exit_on_load_failure
        self.metrics = metrics or Metrics()
        self.split_requests: Any = None  # myelin_split_requests_total, made when aliases are set
        self.shadow_counters: Any = None  # myelin_shadow_{requests,dropped}_total, made when a shadow is set
        self.mirror: Any = None  # the copies to splitters' shadows (shadow.py), with MYELIN_SHADOW_TARGETS
        # Bytes of request bodies being received at once, this process's APIs together (lifecycle.py).
        self.body_budget = BodyBudget(self.settings.max_body_bytes_in_flight)
        self.cost = CostMeter.from_env()  # CPU seconds per prediction and the stack's estimate, in /info
        self.processes = processes
        self.on_loaded = on_loaded
        self.runtimes: dict[str, ApiRuntime] = {}
        for folder, spec in apis:
            self.runtimes[spec.endpoint] = self.new_runtime(folder, spec)
        #: The native routes (POST <endpoint>, an AsyncAPI's GET <endpoint>/<id>): APIs that speak `myelin`.
        self.native = {e: r for e, r in self.runtimes.items() if PROTOCOL_MYELIN in protocols_of(r.spec)}
        #: The other protocols' routes (protocols.py), and the server-wide OIP routes.
        self.protocol_routes = ProtocolRoutes(list(self.runtimes.values()), self)
        #: MYELIN_ENDPOINT_ALIASES: path -> (runtime, its myelin_split_requests_total{splitter,api} series, the
        #: splitter's name if it has a shadow here (MYELIN_SHADOW_TARGETS), else None).
        self.aliases: dict[str, tuple[ApiRuntime, Any, str | None]] = {}
        self._route_aliases()
        self.draining = False
        self.started = False
        self._tasks: set[asyncio.Task] = set()
        self.control = with_request_id(self._control_app())

    def new_runtime(self, folder: Path, spec: ApiSpec) -> ApiRuntime:
        if spec.kind == "AsyncAPI":
            from .asyncapi import AsyncApiRuntime

            return AsyncApiRuntime(folder, spec, self.metrics, self.log, self.processes, self.settings, self.spawn,
                                   self.body_budget)
        return ApiRuntime(folder, spec, self.metrics.for_api(spec.name, spec.target_in_flight), self.log,
                          self.processes, self.settings, self.body_budget)

    def apply_settings(self, settings: Settings) -> None:
        """Server settings the APIs need before they load: the model cache (model_files.py), the arrival-time
        header of APIs scaled to zero (arrival.py)."""
        self.settings = settings
        self.body_budget.limit = settings.max_body_bytes_in_flight
        self._route_aliases()
        for runtime in self.runtimes.values():
            runtime.settings = settings  # the model cache (model_files.py) and what follows
        if settings.arrival_header is None:
            return
        from .arrival import ArrivalClock
        from .metrics import multiprocess_dir

        for runtime in self.runtimes.values():
            runtime.arrival = ArrivalClock(settings.arrival_header, *runtime.metrics.cold_start_series(),
                                           budget=runtime.timeout, marker_dir=multiprocess_dir())

    def _route_aliases(self) -> None:
        """A TrafficSplitter in the cloud: the ALB forwards the splitter's path, unchanged, to one of its APIs'
        pods, which answer it as their own endpoint (MYELIN_ENDPOINT_ALIASES, set by the cluster)."""
        aliases = self.settings.endpoint_aliases
        old_mirror, self.mirror = self.mirror, None
        if old_mirror is not None:
            old_mirror.close()  # copies in flight under the previous settings end with it
        if not aliases:
            self.aliases = {}
            return
        from .settings import SettingsError

        var = ENDPOINT_ALIASES_ENV
        if len(self.runtimes) != 1:
            raise SettingsError(f"{var}: only `myelin serve` of one API answers on aliases (serving "
                                f"{len(self.runtimes)}); `myelin local` routes a splitter itself")
        runtime = next(iter(self.runtimes.values()))
        if runtime.asynchronous or PROTOCOL_MYELIN not in protocols_of(runtime.spec):
            raise SettingsError(f"{var}: API {runtime.name} is not a RealtimeAPI speaking myelin; a splitter's "
                                "requests can only go to one")
        if self.split_requests is None:
            self.split_requests = Counter(SPLIT_REQUESTS, "Requests a TrafficSplitter sent to each of its APIs "
                                          "(in the cloud: counted by the API that answered them).",
                                          [LABEL_SPLITTER, LABEL_API], registry=self.metrics.registry)
        shadows = self.settings.shadow_targets
        if shadows:
            from .shadow import ShadowMirror, shadow_counters

            if self.shadow_counters is None:
                self.shadow_counters = shadow_counters(self.metrics.registry)
            self.mirror = ShadowMirror(runtime.name, shadows, runtime.max_body, runtime.timeout,
                                       self.shadow_counters)
        mirrored = {t.splitter for t in shadows}
        routes = {}
        for splitter, path in aliases:
            if path in self.runtimes:
                raise SettingsError(f"{var}: {path} is API {runtime.name}'s own endpoint")
            # Series at 0 from the start, so a dashboard's rate shows the first request.
            routes[path] = (runtime, self.split_requests.labels(splitter, runtime.name),
                            splitter if splitter in mirrored else None)
        self.aliases = routes

    def on_write_timeout(self, path: str) -> None:
        """A connection was aborted for its write deadline (protection.py): count it against its API."""
        alias = self.aliases.get(path)
        runtime = (self.runtimes.get(path) or self.runtimes.get(path.rpartition("/")[0])  # <endpoint>, or <endpoint>/<id>
                   or (alias[0] if alias is not None else None)  # a splitter's path (MYELIN_ENDPOINT_ALIASES)
                   or self.protocol_routes.runtime_for(path))  # an OpenAI or OIP route
        self.metrics.write_timeouts.labels(runtime.name if runtime is not None else "").inc()

    # ------------------------------------------------------------------ ASGI
    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            method = scope["method"]
            if method == "POST":
                runtime = self.native.get(scope["path"])
                if runtime is not None:
                    if runtime.asynchronous:
                        await runtime.submit(scope, receive, send)
                    else:
                        await handle_predict(runtime, scope, receive, send)
                    return
                alias = self.aliases.get(scope["path"])
                if alias is not None:  # a splitter's path: answered as the API's own endpoint
                    alias[1].inc()
                    if alias[2] is None:
                        await handle_predict(alias[0], scope, receive, send)
                    else:  # and copied to the splitter's shadow once answered (shadow.py)
                        await self.mirror.predict(alias[2], handle_predict, alias[0], scope, receive, send)
                    return
            elif method == "GET":  # an AsyncAPI job: GET <endpoint>/<id>
                endpoint, _, job_id = scope["path"].rpartition("/")
                runtime = self.native.get(endpoint)
                if runtime is not None and runtime.asynchronous:
                    await runtime.status(job_id, scope, receive, send)
                    return
            route = self.protocol_routes.match(method, scope["path"])
            if route is not None:
                await route(scope, receive, send)
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

    async def _start_runtime(self, runtime: ApiRuntime) -> None:
        await runtime.start()
        if runtime.state is State.FAILED and self.exit_on_load_failure is not None:
            err = runtime.load_error
            print(f"myelin serve: {runtime.name} failed to load: {err}", file=sys.stderr, flush=True)
            self.log.flush()
            os._exit(self.exit_on_load_failure)
        # Move the model's (long-lived) objects out of the collector's reach: full collections then
        # scan only per-request garbage, which keeps them from stalling requests for tens of ms.
        gc.collect()
        gc.freeze()
        runtime.sample_metrics()
        self.cost.loaded(runtime, self.metrics)
        if self.on_loaded is not None:
            self.on_loaded(runtime)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.mirror is not None:
            self.mirror.close()
        for runtime in self.runtimes.values():
            runtime.close()
        self.log.flush()

    async def _sample_forever(self) -> None:
        while True:
            self.sample_metrics()
            runtime = self.stuck_too_long() if self.exit_when_stuck else None
            if runtime is not None:
                self.log.event("error", "every prediction slot has been stuck past serving.stuck_timeout; this "
                               "worker exits and the supervisor starts a fresh one", api=runtime.name,
                               stuck_seconds=round(runtime.stuck_for(), 1))
                self.log.flush()
                os._exit(70)
            await asyncio.sleep(SAMPLE_INTERVAL_S)

    def stuck_too_long(self) -> ApiRuntime | None:
        """An API whose every slot has been held by predicts past their deadline for longer than its stuck_timeout."""
        for runtime in self.runtimes.values():
            if runtime.wedged and runtime.stuck_for() > runtime.stuck_timeout:
                return runtime
        return None

    def sample_metrics(self) -> None:
        for runtime in self.runtimes.values():
            runtime.sample_metrics()
        self.metrics.body_bytes.set(self.body_budget.used)

    # ------------------------------------------------------------------ drain
    def begin_drain(self) -> None:
        self.draining = True
        for runtime in self.runtimes.values():
            runtime.begin_drain()

    async def drain(self, timeout: float) -> bool:
        """Readiness 503 and new predictions refused at once; then wait for in-flight requests."""
        self.begin_drain()
        results = await asyncio.gather(*(r.drained(timeout) for r in self.runtimes.values()))
        if not all(results):
            # Streams still running after the grace period end with an error event, not a cut connection.
            for runtime in self.runtimes.values():
                runtime.end_streams()
            await asyncio.gather(*(r.drained(STREAM_END_S) for r in self.runtimes.values()))
        return all(results)

    @property
    def ready(self) -> bool:
        if self.draining or not self.runtimes:
            return False
        runtimes = list(self.runtimes.values())
        if any(r.state is State.LOADING for r in runtimes):
            return False
        # Serving one API (a container): ready only if it loaded and is not wedged by stuck predicts.
        # Serving several (myelin local): ready once all have finished loading and at least one serves.
        serving = [r.state is State.READY and not r.wedged for r in runtimes]
        return any(serving) if len(serving) > 1 else serving[0]

    # ------------------------------------------------------------------ control routes
    def _control_app(self) -> FastAPI:
        # No redirect for a trailing slash: Starlette would build it from the client's Host header.
        app = FastAPI(title="Myelin", version="1", docs_url=None, redoc_url=None, redirect_slashes=False)
        # Swagger UI from an installed package: /docs works offline.
        app.mount(DOCS_ASSETS_PATH, StaticFiles(directory=str(swagger_assets())), name="docs-assets")

        @app.get("/docs", include_in_schema=False)
        async def docs() -> Response:
            return swagger_page("/openapi.json", "Myelin")

        @app.get("/healthz", summary="Liveness: 200 while the server can serve; 503 once every prediction slot "
                 "has been held by predicts past their deadline for longer than serving.stuck_timeout.")
        async def healthz(request: Request) -> Response:
            stuck = self.stuck_too_long()
            if stuck is not None:
                return _error_response(
                    request, 503, "stuck",
                    f"API {stuck.name}: every prediction slot has been held by predicts running past their "
                    f"timeout for {stuck.stuck_for():.0f}s (serving.stuck_timeout: {stuck.spec.serving.stuck_timeout}); "
                    "restart the process")
            return _json({"status": "ok"})

        @app.get("/readyz", summary="Readiness: 200 once the predictor(s) loaded; 503 while loading, draining, or "
                 "while every prediction slot is held by predicts past their deadline.")
        async def readyz() -> Response:
            ready = self.ready
            if ready:
                status = "ready"
            elif self.draining:
                status = "draining"
            elif any(r.wedged for r in self.runtimes.values()):
                status = "stuck"
            else:
                status = "not_ready"
            body = {"status": status,
                    "apis": {r.name: ("stuck" if r.wedged else r.state.value) for r in self.runtimes.values()}}
            return _json(body, 200 if ready else 503)

        @app.get("/metrics", summary="Prometheus metrics (text format).", response_class=PlainTextResponse)
        async def metrics() -> Response:
            self.sample_metrics()
            return Response(self.metrics.exposition(), media_type=CONTENT_TYPE.decode())

        @app.get("/info", summary="The APIs served here, their state and effective spec.")
        async def info() -> Response:
            apis = []
            for r in self.runtimes.values():
                described = r.describe()
                if not self.expose_errors:
                    described.pop("error", None)
                apis.append(dict(described, spec=public_spec(r.spec), cost=self.cost.describe(r, self.metrics)))
            if self.mirror is not None:  # a splitter's shadow, copied to from here (MYELIN_SHADOW_TARGETS)
                return _json({"apis": apis, "shadows": self.mirror.describe()})
            return _json({"apis": apis})

        for runtime in self.native.values():  # an API that does not speak myelin has no native route to document
            if runtime.asynchronous:
                from .asyncapi.routes import document_job_routes

                document_job_routes(app, runtime)
            else:
                self._document_endpoint(app, runtime)
        self._document_protocols(app)

        async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
            kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
            path = request.url.path[:200]
            message = {404: f"no API at {path}", 405: f"{request.method} is not allowed on {path}"}.get(
                exc.status_code, str(exc.detail))
            return _error_response(request, exc.status_code, kind, message, exc.headers)

        async def validation_error(request: Request, exc: RequestValidationError) -> Response:
            return _error_response(request, 400, "bad_request", str(exc.errors())[:500])

        app.add_exception_handler(StarletteHTTPException, http_error)
        app.add_exception_handler(RequestValidationError, validation_error)
        return app

    def _document_protocols(self, app: FastAPI) -> None:
        """The OpenAI and Open Inference Protocol routes of the APIs that speak them, added to the OpenAPI document
        (those requests never reach FastAPI either: MyelinApp answers them first)."""
        from fastapi.openapi.utils import get_openapi

        from .openapi_doc import protocol_paths

        def openapi() -> dict[str, Any]:
            if app.openapi_schema is None:
                schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
                for runtime in self.runtimes.values():
                    schema.setdefault("paths", {}).update(protocol_paths(runtime.spec, runtime.endpoint))
                app.openapi_schema = schema
            return app.openapi_schema

        app.openapi = openapi  # type: ignore[method-assign]

    def _document_endpoint(self, app: FastAPI, runtime: ApiRuntime) -> None:
        """Describe the predict route in OpenAPI. Requests never reach this route: MyelinApp answers them first."""
        op = operation(runtime.spec, runtime.folder)

        async def documented(request: Request) -> Response:  # pragma: no cover - shadowed by the hot path
            return _json({})

        app.add_api_route(runtime.endpoint, documented, methods=["POST"], summary=op["summary"],
                          responses=op["responses"], openapi_extra={"requestBody": op["requestBody"]},
                          name=runtime.name, operation_id=op["operationId"])
