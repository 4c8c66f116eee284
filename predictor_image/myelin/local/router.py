"""The ASGI app `myelin local` runs on its port: forwards each API's traffic to that API's server process, and
answers the local routes itself (`/`, `/healthz`, `/readyz`, `/metrics`, `/info`, `/docs`, `/openapi.json`).

Forwarding keeps status, headers (X-Request-ID included) and bytes as they are, and streams responses chunk
by chunk as the API produces them; a client that goes away closes the upstream response, so the API sees the
disconnect too. An API that is loading, failed or gone answers the contract's JSON errors, never a stack trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx
import orjson
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from starlette.staticfiles import StaticFiles

from .. import contract
from ..errors import HTTPError
from ..http_io import ApiKeys, ClientGone, RequestHead, send_error
from ..metrics import CONTENT_TYPE
from ..openapi_doc import DOCS_ASSETS_PATH, operation, sample_file, swagger_assets, swagger_page
from ..server import _error_response, with_request_id
from .child import ChildState
from .cost_view import attach_costs
from .manager import ARRIVAL_HEADER, LocalApi, LocalServer
from .page import SAMPLE_PATH, readme_summary, render, sample_info
from .scale_metrics import OWN as OWN_FAMILIES

#: Hop-by-hop headers (RFC 9110 7.6.1) and framing the router sets itself: never forwarded as they are.
_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer", b"upgrade",
        b"proxy-authenticate", b"proxy-authorization", b"host", b"content-length"}


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


#: How often the API folders are listed to catch added or removed folders whose file events were lost.
RESCAN_S = 2.0


class LocalRouter:
    def __init__(self, server: LocalServer, watch: bool):
        self.server = server
        self.watch = watch
        self.control = with_request_id(self._control_app())
        self._tasks: set[asyncio.Task] = set()
        self.draining = False

    # ------------------------------------------------------------------ ASGI
    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            api = self.server.route(scope["path"]) or self.server.unserved(scope["path"])
            if api is not None:
                await self._forward(api, scope, receive, send)
                return
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        await self.control(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.server.start_all()
                if self.watch:
                    self._spawn(self._watch())
                    self._spawn(self._rescan())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for task in list(self._tasks):
                    task.cancel()
                await self.server.close(5.0)
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def apply_settings(self, settings: Any) -> None:
        """Server settings reach each API's own server through its environment; the router needs none."""

    async def drain(self, timeout: float) -> bool:
        """SIGTERM/SIGINT: readiness 503, then every API's server drains (in-flight requests finish)."""
        self.draining = True
        await self.server.close(timeout)
        return True

    # ------------------------------------------------------------------ watching the disk
    async def _rescan(self) -> None:
        """File events can be lost: files written into a folder created a moment before are not seen when the
        watch on the new folder is registered after them (inotify adds it only once the folder exists, and a
        busy machine makes that late). A cheap listing now and then catches what the events missed."""
        while True:
            await asyncio.sleep(RESCAN_S)
            self.server.rescan()

    async def _watch(self) -> None:
        from watchfiles import awatch

        def relevant(change: Any, path: str) -> bool:
            name = path.rsplit("/", 1)[-1]
            if "__pycache__" in path or name.endswith(("~", ".swp", ".tmp")):
                return False
            # Code, specs and requirements; a folder appearing or disappearing shows as its api.yaml.
            return name.endswith((".py", ".yaml", ".yml")) or name == "requirements.txt"

        async for changes in awatch(self.server.root, debounce=200, step=50, watch_filter=relevant):
            touched = {self.server.folder_of(path) for _, path in changes}
            for folder in sorted(f for f in touched if f is not None):
                self.server.schedule(folder)

    # ------------------------------------------------------------------ forwarding
    async def _forward(self, api: LocalApi, scope: dict, receive: Any, send: Any) -> None:
        request_id = ""
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                request_id = value.decode("latin-1")[:128]
        if not request_id:
            from ..http_io import new_request_id

            request_id = new_request_id()
        arrived = time.time()
        child = api.serving
        if child is None or child.state is not ChildState.READY or child.client is None or self.draining:
            # As its own server would: authentication first, then a generic 503 (details on the console and /info).
            if api.spec is not None and api.spec.networking.auth is not None:
                try:
                    _api_keys(api.spec).check(RequestHead(scope["headers"], api.spec.networking.auth.header.encode()))
                except HTTPError as err:
                    await send_error(send, err.status_code, err.error_type, err.message, request_id, err.headers)
                    return
            if self.draining or api.state not in ("idle", "loading") or not api.scales_to_zero:
                await _unavailable(send, api, request_id, self.draining)
                return
            # Scaled to zero: hold the request while the API loads, within its serving.timeout.
            try:
                child = await self.server.wake(api, arrived + api.spec.serving.timeout.seconds - time.time())
            except asyncio.TimeoutError:
                retry = self.server.retry_after(api)
                await send_error(send, 503, "not_ready", f"API {api.name} is starting (scaled to zero) and was not "
                                 f"ready within serving.timeout ({api.spec.serving.timeout}); retry in about {retry}s",
                                 request_id, [(b"retry-after", str(retry).encode())])
                return
            if child is None or child.client is None:
                await send_error(send, 503, "not_ready", f"API {api.name} failed to load during its cold start: "
                                 f"{api.error or 'see the console'}", request_id, [(b"retry-after", b"5")])
                return
        api.last_active = time.monotonic()
        child.in_flight += 1
        started = False
        try:
            try:
                body = await _read_body(receive, child.max_body)
            except ClientGone:
                return
            except _TooLarge:
                await send_error(send, 413, "payload_too_large",
                                 f"request body exceeds the {child.max_body} byte limit (serving.max_body_size)",
                                 request_id, [(b"connection", b"close")])
                return
            headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP and k.lower() != ARRIVAL_HEADER]
            if not any(k == b"x-request-id" for k, _ in headers):
                headers.append((b"x-request-id", request_id.encode("latin-1")))
            if api.scales_to_zero:  # its server keeps the deadline from arrival here, however long it was held
                headers.append((ARRIVAL_HEADER, repr(arrived).encode()))
            url = httpx.URL(path=scope["path"], query=scope.get("query_string", b""))
            request = child.client.build_request(scope["method"], url, headers=headers, content=body)
            response = await child.client.send(request, stream=True)
            gone = asyncio.ensure_future(_disconnected(receive))
            try:
                await send({"type": "http.response.start", "status": response.status_code,
                            "headers": [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP or k.lower() == b"content-length"]})
                started = True
                async for chunk in response.aiter_raw():
                    if gone.done():
                        break  # the client left: closing the upstream response tells the API
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if not gone.done():
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                gone.cancel()
                await response.aclose()
        except httpx.HTTPError:
            if not started:
                await send_error(send, 503, "not_ready", f"API {api.name} stopped answering (it is restarting or "
                                 "was stopped); retry", request_id, [(b"retry-after", b"1")])
        finally:
            child.in_flight -= 1
            api.last_active = time.monotonic()

    # ------------------------------------------------------------------ local routes
    def _api_list(self, base: str) -> list[dict[str, Any]]:
        out = []
        for api in sorted(self.server.apis.values(), key=lambda a: a.name):
            info = api.describe()
            info["summary"] = readme_summary(api.folder)
            info["sample"] = sample_info(api.folder)
            if api.traceback and info.get("error"):
                info["traceback"] = api.traceback
            out.append(info)
        return out

    def _control_app(self) -> FastAPI:
        app = FastAPI(title="myelin local", version="1", docs_url=None, redoc_url=None, openapi_url=None,
                      redirect_slashes=False)
        app.mount(DOCS_ASSETS_PATH, StaticFiles(directory=str(swagger_assets())), name="docs-assets")
        server = self.server

        @app.get("/", summary="The APIs served here: JSON for clients, a page to try them for browsers.")
        async def index(request: Request) -> Response:
            apis = await attach_costs(self._api_list(server.base_url), server)
            if "text/html" in request.headers.get("accept", ""):
                return HTMLResponse(render(apis, server.base_url))
            return _json({"apis": apis})

        @app.get(SAMPLE_PATH + "/{name}", include_in_schema=False)
        async def sample(name: str, request: Request) -> Response:
            for api in server.apis.values():
                if api.name == name and (path := sample_file(api.folder)) is not None:
                    return FileResponse(path)
            return _error_response(request, 404, "not_found", f"no sample for API {name}")

        @app.get(contract.HEALTH_PATH, summary="Liveness: the local server answers.")
        async def healthz() -> Response:
            return _json({"status": "ok"})

        @app.get(contract.READY_PATH, summary="Readiness: 200 while at least one API serves.")
        async def readyz() -> Response:
            ready = server.ready and not self.draining
            status = "ready" if ready else ("draining" if self.draining else "not_ready")
            return _json({"status": status, "apis": {a.name: a.state for a in server.apis.values()}},
                         200 if ready else 503)

        @app.get(contract.METRICS_PATH, summary="Prometheus metrics of every API, and this process's own.",
                 response_class=PlainTextResponse)
        async def metrics() -> Response:
            return Response(await self._metrics(), media_type=CONTENT_TYPE.decode())

        @app.get(contract.INFO_PATH, summary="Every API: state, serving version, load time, last error.")
        async def info() -> Response:
            return _json({"apis": await attach_costs(self._api_list(server.base_url), server)})

        @app.get(contract.OPENAPI_PATH, include_in_schema=False)
        async def openapi() -> Response:
            schema = get_openapi(title="myelin local", version="1", routes=app.routes)
            for api in server.apis.values():
                if api.spec is not None and api.endpoint:
                    schema.setdefault("paths", {})[api.endpoint] = {"post": operation(api.spec, api.folder)}
            return _json(schema)

        @app.get(contract.DOCS_PATH, include_in_schema=False)
        async def docs() -> Response:
            return swagger_page(contract.OPENAPI_PATH, "myelin local")

        async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
            kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
            path = request.url.path[:200]
            message = {404: f"no API at {path}", 405: f"{request.method} is not allowed on {path}"}.get(
                exc.status_code, str(exc.detail))
            return _error_response(request, exc.status_code, kind, message, exc.headers)

        app.add_exception_handler(StarletteHTTPException, http_error)
        return app

    async def _metrics(self) -> bytes:
        """This process's process_* metrics and every ready API's myelin_* metrics (each carries its `api`)."""
        families: dict[str, Any] = {}
        for api in list(self.server.apis.values()):
            child = api.serving
            if child is None or child.client is None or child.state is not ChildState.READY:
                continue
            with contextlib.suppress(httpx.HTTPError):
                text = (await child.client.get(contract.METRICS_PATH, timeout=5)).text
                for family in text_string_to_metric_families(text):
                    if not family.name.startswith(contract.METRIC_PREFIX) or family.name in OWN_FAMILIES:
                        continue  # each child's process_* would clash; cold starts are counted here
                    if family.name in families:
                        families[family.name].samples.extend(family.samples)
                    else:
                        families[family.name] = family

        class Merged:
            def collect(self) -> Any:
                return list(families.values())

        registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        registry.register(Merged())
        return generate_latest(registry) + generate_latest(self.server.scale_metrics.registry)


class _TooLarge(Exception):
    pass


async def _read_body(receive: Any, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _disconnected(receive: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def _api_keys(spec: Any) -> ApiKeys:
    from ..runtime import _read_keys

    auth = spec.networking.auth
    keys = [k.strip() for k in _read_keys(auth.api_keys_env).split(",") if k.strip()]
    return ApiKeys(keys, auth.header)


async def _unavailable(send: Any, api: LocalApi, request_id: str, draining: bool) -> None:
    if draining:
        await send_error(send, 503, "shutting_down", "myelin local is shutting down", request_id,
                         [(b"retry-after", b"1"), (b"connection", b"close")])
    elif api.state == "loading":
        await send_error(send, 503, "not_ready", f"API {api.name} is loading", request_id, [(b"retry-after", b"1")])
    else:
        await send_error(send, 503, "not_ready", f"API {api.name} is not available: it failed to load; the console "
                         f"and {contract.INFO_PATH} say why (request id {request_id})", request_id,
                         [(b"retry-after", b"5")])
