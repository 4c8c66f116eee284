"""The ASGI app `myelin local` runs on its port: forwards each API's traffic to that API's server process, and
answers the local routes itself (`/`, `/healthz`, `/readyz`, `/metrics`, `/info`, `/docs`, `/openapi.json`).

Forwarding passes the client's request as the ALB does (its headers as sent, Host included, plus X-Request-ID
if it had none) and streams the body to the API's process as it arrives (never buffered whole; at most
serving.max_body_size, else 413); status, headers and bytes of the answer come back as they are, chunk by chunk,
with one `date` (this server's). A client that goes away, while its request waits for the answer or between
chunks, closes the upstream connection at once, so the API sees the disconnect too. API keys are checked
first, whatever the API's state. Every response the router makes itself (401, 404, 405, 413, 503, 400...) is
the contract's JSON error with a request id and leaves one request log line; never a stack trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

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
from ..http_io import ClientGone, RequestHead, ResponseWriter, declared_length, has_header, new_request_id, send_error
from ..metrics import CONTENT_TYPE
from ..openapi_doc import DOCS_ASSETS_PATH, paths, sample_file, swagger_assets, swagger_page
from ..protocol_oip import ServerRoutes
from ..protocols import error_writer_for
from ..spec.protocols import protocols_of
from ..server import _error_response, with_request_id
from .child import ApiProcess, ChildState
from .cost_view import attach_costs
from .manager import ARRIVAL_HEADER, LocalApi, LocalServer
from .page import SAMPLE_PATH, readme_summary, render, sample_info
from .scale_metrics import OWN as OWN_FAMILIES

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
        self._oip_server = ServerRoutes(self)

    # ------------------------------------------------------------------ ASGI
    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope["myelin.arrived"] = time.monotonic()
            if bad_target(scope):
                await self._reply(None, scope, send, 400, "bad_request", "the request path holds a control "
                                  "character", _request_id(scope))
                return
            path = scope["path"]
            if path == contract.OIP_PREFIX or path.startswith(contract.OIP_PREFIX + "/"):
                await self._oip(scope, receive, send)
                return
            api = self.server.route(path)
            if api is not None:
                if api.splitter is not None:  # kind TrafficSplitter: local/splitter.py picks the API
                    await api.splitter.forward(self, api, scope, receive, send)
                    return
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
        """Code, specs and requirements of every API folder, and each API's local `predictor.model_uri` folder
        (every file in it: new weights reload the API as new code does). A model folder outside the APIs folder
        is watched as well; the watch is renewed when the set of model folders changes (an api.yaml edit)."""
        from watchfiles import awatch

        root = self.server.root.resolve()

        def relevant(change: Any, path: str) -> bool:
            name = path.rsplit("/", 1)[-1]
            if "__pycache__" in path or name.endswith(("~", ".swp", ".tmp")):
                return False
            resolved = Path(path).resolve()
            if any(resolved == model or model in resolved.parents for model in self.server.model_folders()):
                return True  # a model file, whatever its name (weights.json, model.bin, ...)
            # Code, specs and requirements; a folder appearing or disappearing shows as its api.yaml.
            return name.endswith((".py", ".yaml", ".yml")) or name == "requirements.txt"

        while True:
            outside = sorted({m for m in self.server.model_folders() if m.is_dir() and not m.is_relative_to(root)})
            renew = asyncio.Event()
            watcher = self._spawn_returning(self._renew_when_models_move(set(outside), root, renew))
            try:
                async for changes in awatch(root, *outside, debounce=200, step=50, watch_filter=relevant,
                                            stop_event=renew):
                    touched: set[Path] = set()
                    for _, path in changes:
                        touched |= self.server.api_folders_of(path)
                    for folder in sorted(touched):
                        self.server.schedule(folder)
            finally:
                watcher.cancel()

    def _spawn_returning(self, coro: Any) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _renew_when_models_move(self, outside: set[Path], root: Path, renew: asyncio.Event) -> None:
        """Ends the current watch once a model folder outside the APIs folder appears or goes (an api.yaml edit)."""
        while True:
            await asyncio.sleep(RESCAN_S)
            now = {m for m in self.server.model_folders() if m.is_dir() and not m.is_relative_to(root)}
            if now != outside:
                renew.set()
                return

    # ------------------------------------------------------------------ forwarding
    def _reply(self, api: LocalApi | None, scope: dict, send: Any, status: int, error_type: str, message: str,
               request_id: str, headers: list[tuple[bytes, bytes]] | None = None) -> Any:
        """A response the router makes itself: the contract's JSON error (in the protocol's shape on an OpenAI or
        OIP route), and its request log line."""
        self.server.console.request(api.name if api is not None else None, request_id, scope["method"],
                                    _printable(scope["path"]), status,
                                    time.monotonic() - scope.get("myelin.arrived", time.monotonic()), error_type)
        writer = error_writer_for(scope["path"], api.spec if api is not None else None)
        if writer is not None:
            return writer(send, status, error_type, message, request_id, headers)
        return send_error(send, status, error_type, message, request_id, headers)

    # ------------------------------------------------------------------ the Open Inference Protocol
    async def _oip(self, scope: dict, receive: Any, send: Any) -> None:
        """`/v2`, `/v2/health/*` answered here for every API; `/v2/models/<name>/...` forwarded to the API of
        that name when it speaks oip."""
        path = scope["path"]
        if path.startswith(contract.OIP_MODELS_PREFIX + "/"):
            name = path[len(contract.OIP_MODELS_PREFIX) + 1:].split("/", 1)[0]
            for api in self.server.apis.values():
                if api.name == name and api.spec is not None and contract.PROTOCOL_OIP in protocols_of(api.spec):
                    await self._forward(api, scope, receive, send)
                    return
            await self._reply(None, scope, send, 404, "not_found", f"no model named {_printable(name[:64])!r} "
                              "(an API whose networking.protocols lists oip)", _request_id(scope))
            return
        handler = self._oip_server.match(scope["method"], path)
        if handler is None:
            await self._reply(None, scope, send, 404, "not_found", f"no route {_printable(path[:200])}",
                              _request_id(scope))
            return
        started = time.monotonic()
        await handler(scope, receive, send)
        self.server.console.request(None, _request_id(scope), scope["method"], _printable(path), 200,
                                    time.monotonic() - started, None)

    @property
    def ready(self) -> bool:
        """OIP server readiness: every API speaking oip serves (or can, scaled to zero); without one, /readyz's."""
        if self.draining:
            return False
        oip = [a for a in self.server.apis.values()
               if a.spec is not None and contract.PROTOCOL_OIP in protocols_of(a.spec)]
        if not oip:
            return self.server.ready
        return all(a.state in ("ready", "idle") for a in oip)

    def stuck_too_long(self) -> None:
        """The router itself never wedges (each API's process answers for its own)."""
        return None

    async def _forward(self, api: LocalApi, scope: dict, receive: Any, send: Any) -> None:
        """Every failure of the forward path is a JSON error with the request id, never uvicorn's plain-text 500."""
        request_id = _request_id(scope)
        writer = ResponseWriter(send)
        try:
            await self._forward_checked(api, scope, receive, writer, request_id)
        except Exception as err:  # noqa: BLE001 - the last line of defence: a bug here must not leak a traceback
            self.server.console.note(f"{api.name}: the router failed on {scope['method']} "
                                     f"{_printable(scope['path'])} (request id {request_id}): "
                                     f"{type(err).__name__}: {err}", level="error")
            if not writer.started:
                await self._reply(api, scope, send, 500, "internal", "the local router failed on this request; "
                                  f"the console says why (request id {request_id})", request_id)

    async def _forward_checked(self, api: LocalApi, scope: dict, receive: Any, send: Any, request_id: str) -> None:
        arrived = time.time()
        # API keys before anything else, whatever the API's state: 401 before 413 or 503.
        keys = api.api_keys()
        if keys is not None:
            try:
                keys.check(RequestHead(scope["headers"], api.spec.networking.auth.header.lower().encode()))
            except HTTPError as err:
                await self._reply(api, scope, send, err.status_code, err.error_type, err.message, request_id,
                                  err.headers)
                return
        if self.draining:
            await _unavailable(self, send, api, scope, request_id, True)
            return
        child = api.serving
        if child is None or child.state is not ChildState.READY or child.client is None:
            if api.state not in ("idle", "loading") or not api.scales_to_zero:
                await _unavailable(self, send, api, scope, request_id, False)
                return
            # Scaled to zero: hold the request while the API loads, within its serving.timeout.
            try:
                child = await self.server.wake(api, arrived + api.spec.serving.timeout.seconds - time.time())
            except asyncio.TimeoutError:
                retry = self.server.retry_after(api)
                await self._reply(api, scope, send, 503, "not_ready",
                                  f"API {api.name} is starting (scaled to zero) and was not ready within "
                                  f"serving.timeout ({api.spec.serving.timeout}); retry in about {retry}s",
                                  request_id, [(b"retry-after", str(retry).encode())])
                return
            if child is None or child.client is None:
                # The load error stays on the console and in /info: it can hold whatever secret the model had.
                await self._reply(api, scope, send, 503, "not_ready",
                                  f"API {api.name} failed to load during its cold start; the console and "
                                  f"{contract.INFO_PATH} say why (request id {request_id})", request_id,
                                  [(b"retry-after", b"5")])
                return
        declared = declared_length(scope["headers"])
        if declared is not None and declared > child.max_body:  # refused before a byte of it is read
            await self._reply(api, scope, send, 413, "payload_too_large",
                              f"request body exceeds the {child.max_body} byte limit (serving.max_body_size)",
                              request_id, [(b"connection", b"close")])
            return
        api.last_active = time.monotonic()
        # The chosen version answers this request even if a reload retires it meanwhile: it is stopped only
        # once the bodies it is receiving are complete and its requests answered (manager._retire).
        child.in_flight += 1
        body = _Body(receive, child.max_body, child, has_body=declared != 0 and (
            declared is not None or has_header(scope["headers"], b"transfer-encoding")))
        try:
            await self._exchange(api, child, scope, send, request_id, arrived, body)
        finally:
            body.finish()
            child.in_flight -= 1
            api.last_active = time.monotonic()

    async def _exchange(self, api: LocalApi, child: ApiProcess, scope: dict, send: ResponseWriter,
                        request_id: str, arrived: float, body: "_Body") -> None:
        """Send the request to the API's process and its answer back, racing both against the client leaving:
        a client that goes away (while its request waits for the answer's headers, or between chunks) closes
        the upstream connection at once, so the API sees the disconnect and its generator's `finally` runs."""
        client = child.client
        assert client is not None
        headers = _forwarded_headers(scope["headers"], request_id)
        if api.scales_to_zero:  # its server keeps the deadline from arrival here, however long it was held
            headers.append((ARRIVAL_HEADER, repr(arrived).encode()))
        request = httpx.Request(scope["method"], _upstream_url(scope), headers=headers,
                                content=body if body.has_body else None)
        pump = asyncio.ensure_future(self._pump(client, request, send, body))
        gone = asyncio.ensure_future(_client_leaves(receive=body.receive, body=body))
        try:
            await asyncio.wait((pump, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not pump.done():
                pump.cancel()  # the client left: cancelling closes the upstream connection
            gone.cancel()
            await asyncio.gather(pump, gone, return_exceptions=True)
        if pump.cancelled():
            return  # the client left; its API logs the request (499)
        err = pump.exception()
        if err is None:
            return
        if body.error == "gone":
            return  # the client left while sending its body
        if isinstance(err, httpx.LocalProtocolError):
            # The request could not be written to the API's connection (nothing reached the API): the client's
            # request is at fault, not the API's process, which is fine.
            if not send.started:
                await self._reply(api, scope, send, 400, "bad_request", "the request could not be forwarded to "
                                  f"API {api.name}: {err}", request_id, [(b"connection", b"close")])
            return
        if isinstance(err, (httpx.HTTPError, RuntimeError, OSError)):
            # The process ended (killed, crashed) or stopped answering: the request was not answered.
            if not send.started:
                await self._reply(api, scope, send, 503, "not_ready",
                                  f"API {api.name} stopped answering (its process ended or was stopped; it is "
                                  "being restarted); retry", request_id,
                                  [(b"retry-after", str(api.retry_after()).encode())])
            return  # started: the answer is cut, and the connection closed (uvicorn), never completed falsely
        raise err

    async def _pump(self, client: httpx.AsyncClient, request: httpx.Request, send: ResponseWriter,
                    body: "_Body") -> None:
        response = await client.send(request, stream=True)
        try:
            headers = [(k, v) for k, v in response.headers.raw if k.lower() not in _RESPONSE_DROP]
            if body.too_large:  # the rest of the client's body is unread: this connection cannot be reused
                headers.append((b"connection", b"close"))
            await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()

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
            body: dict[str, Any] = {"apis": await attach_costs(self._api_list(server.base_url), server)}
            standby = server.describe_standby()
            if standby is not None:  # the warm standby for APIs scaled to zero: no API's process
                body["standby"] = standby
            return _json(body)

        @app.get(contract.OPENAPI_PATH, include_in_schema=False)
        async def openapi() -> Response:
            schema = get_openapi(title="myelin local", version="1", routes=app.routes)
            for api in server.apis.values():
                if api.spec is not None and api.endpoint:
                    schema.setdefault("paths", {}).update(paths(api.spec, api.folder, api.endpoint))
            return _json(schema)

        @app.get(contract.DOCS_PATH, include_in_schema=False)
        async def docs() -> Response:
            return swagger_page(contract.OPENAPI_PATH, "myelin local")

        async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
            kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
            path = _printable(request.url.path[:200])
            message = {404: f"no API at {path}", 405: f"{request.method} is not allowed on {path}"}.get(
                exc.status_code, str(exc.detail))
            response = _error_response(request, exc.status_code, kind, message, exc.headers)
            scope = request.scope
            self.server.console.request(None, scope.get("myelin.request_id", ""), scope["method"],
                                        _printable(scope["path"]), exc.status_code,
                                        time.monotonic() - scope.get("myelin.arrived", time.monotonic()), kind)
            return response

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
        return (generate_latest(registry) + generate_latest(self.server.scale_metrics.registry)
                + generate_latest(self.server.split_metrics.registry))


class _Body:
    """The client's request body as an async iterator for httpx: forwarded chunk by chunk as it arrives, never
    held whole. A body without a Content-Length (chunked) that grows past `limit` is cut one byte past it: the
    API's server, which has the same limit, answers that 413 (and logs it) and the router reads no more of it."""

    def __init__(self, receive: Any, limit: int, child: ApiProcess, has_body: bool):
        self.receive = receive
        self.limit = limit
        self.has_body = has_body
        self.size = 0
        self.error: str | None = None  # "gone": the client left mid-body
        self.too_large = False  # cut past the limit: the rest is never read, the connection closes after
        self.complete = asyncio.Event()
        self._child: ApiProcess | None = child
        child.uploading += 1
        if not has_body:
            self.finish()

    def finish(self) -> None:
        """The body is complete (or will never be): the process it goes to may be retired from now on."""
        self.complete.set()
        if self._child is not None:
            self._child.uploading -= 1
            self._child = None

    async def __aiter__(self) -> Any:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.error = "gone"
                self.finish()
                raise ClientGone()
            chunk = message.get("body", b"")
            self.size += len(chunk)
            more = message.get("more_body", False)
            if self.size > self.limit:
                self.too_large = True
                chunk, more = chunk[:len(chunk) - (self.size - self.limit - 1)], False
            if not more:
                self.finish()  # from here on the disconnect watcher reads `receive`
            if chunk:
                yield chunk
            if not more:
                return


async def _client_leaves(receive: Any, body: _Body) -> None:
    """Returns when the client disconnects. Reads `receive` only once the body has been read whole."""
    await body.complete.wait()
    if body.error is not None:
        await asyncio.Event().wait()  # the body's own error ends the exchange
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


#: Request headers never forwarded: hop-by-hop (RFC 9110 7.6.1), the message framing of the client's connection
#: (`transfer-encoding`: the body is framed again, chunked, on the API's connection) and the router's own arrival
#: header. The client's Host (the first, if it sent several), Content-Length and everything else pass as they are,
#: as the ALB passes them.
_REQUEST_DROP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade",
                 b"proxy-authenticate", b"proxy-authorization", b"transfer-encoding", ARRIVAL_HEADER}
#: Response headers the router's own server sets (its `date`: one per response) or that are hop-by-hop.
_RESPONSE_DROP = {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer",
                  b"upgrade", b"date", b"server"}
#: Control characters: no API path holds one (a client can still send one percent-encoded, e.g. %0A).
_CTL = re.compile(r"[\x00-\x1f\x7f]")


def _request_id(scope: dict) -> str:
    for key, value in scope["headers"]:
        if key == b"x-request-id" and value:
            return value.decode("latin-1")[:128]
    return new_request_id()


def _forwarded_headers(headers: list[tuple[bytes, bytes]], request_id: str) -> list[tuple[bytes, bytes]]:
    """The client's headers as it sent them (values without the surrounding whitespace HTTP ignores, as
    `myelin serve` reads them), minus hop-by-hop ones; X-Request-ID added only if the client sent none."""
    out = []
    host = False
    for k, v in headers:
        name = k.lower()
        if name in _REQUEST_DROP or (name == b"host" and host):
            continue  # a second Host would make the API's connection refuse the request; `myelin serve` reads the first
        host = host or name == b"host"
        out.append((k, v.strip(b" \t")))
    if not any(k.lower() == b"x-request-id" for k, _ in out):
        out.append((b"x-request-id", request_id.encode("latin-1")))
    return out


def _upstream_url(scope: dict) -> httpx.URL:
    """The request target as the client sent it (raw path, percent-encoding kept), on the API's socket."""
    raw = scope.get("raw_path") or scope["path"].encode("utf-8")
    target = quote(raw, safe="/%:@!$&'()*+,;=-._~")
    query = scope.get("query_string", b"")
    if query:
        target += "?" + quote(query, safe="/%:@!$&'()*+,;=-._~?")
    return httpx.URL("http://myelin-local" + target)


def bad_target(scope: dict) -> bool:
    """A control character in the (decoded) path: refused with a JSON 400 before any routing."""
    return _CTL.search(scope["path"]) is not None


def _printable(path: str) -> str:
    """A path for the log and the console: control characters escaped, at most 1000 characters."""
    return path[:1000].encode("unicode_escape").decode("ascii") if not path.isprintable() else path[:1000]


async def _unavailable(router: "LocalRouter", send: Any, api: LocalApi, scope: dict, request_id: str,
                       draining: bool) -> None:
    if draining:
        await router._reply(api, scope, send, 503, "shutting_down", "myelin local is shutting down", request_id,
                            [(b"retry-after", b"1"), (b"connection", b"close")])
    elif api.state == "restarting":
        retry = api.retry_after()
        await router._reply(api, scope, send, 503, "not_ready",
                            f"API {api.name} is restarting: its process {(api.last_exit or {}).get('how', 'ended')}; "
                            f"retry in about {retry}s", request_id, [(b"retry-after", str(retry).encode())])
    elif api.state == "loading":
        await router._reply(api, scope, send, 503, "not_ready", f"API {api.name} is loading", request_id,
                            [(b"retry-after", b"1")])
    else:
        await router._reply(api, scope, send, 503, "not_ready",
                            f"API {api.name} is not available: it failed to load; the console and "
                            f"{contract.INFO_PATH} say why (request id {request_id})", request_id,
                            [(b"retry-after", b"5")])
