"""Protocol front doors: which path goes to which adapter, and the request skeleton every adapter shares.

An API speaks the protocols its `networking.protocols` lists. `myelin` is the native route (`endpoint.py`);
`openai` (`protocol_openai.py`) and `oip` (`protocol_oip.py`) are adapters: each decodes its protocol's
request into the predictor's call and encodes the result, and reuses everything else as it is: the request's
`lifecycle.Ticket` (admission before the body, the body budget, in-flight and stuck accounting, release after
the last byte), the `Invoker` (batching, deadlines), `streaming.Stream` (disconnects, drains, the
time-to-first-item metric), the request metrics and the log line.

Each adapter's request goes through `endpoint.handle_predict` with the adapter's work and error writer: the
one request lifecycle, the same code as the native route's.

`ProtocolRoutes.match` is consulted by `MyelinApp` only for a path that is not an API's native route, so
the native hot path pays nothing for it. The server-wide OIP routes (`/v2`, `/v2/health/live`,
`/v2/health/ready`) are answered by every server, whatever its APIs speak.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable

from .contract import OIP_HEALTH_PREFIX, OIP_MODELS_PREFIX, OIP_PREFIX, OPENAI_PREFIX
from .endpoint import Send, _extras
from .errors import HTTPError
from .http_io import RequestHead
from .spec.protocols import protocols_of

if TYPE_CHECKING:
    from .runtime import ApiRuntime


class ProtocolError(HTTPError):
    """A request the protocol refuses, naming the request field (`param`, for OpenAI's error shape)."""

    def __init__(self, status_code: int, error_type: str, message: str, param: str | None = None,
                 headers: list[tuple[bytes, bytes]] | None = None):
        super().__init__(status_code, error_type, message, headers)
        self.param = param


def check_access(runtime: "ApiRuntime", head: RequestHead) -> None:
    """API keys first, as on the native route: an unauthenticated client learns nothing about the API."""
    keys = runtime.api_keys
    if keys is not None:
        keys.check(head)


def extras(runtime: "ApiRuntime", scope: dict) -> dict[str, Any]:
    """The optional arguments the predictor declared (query_params, headers), as on the native route."""
    predictor = runtime.predictor
    if not (predictor.wants_query_params or predictor.wants_headers):
        return {}
    return _extras(runtime, scope)


Handler = Callable[[dict, Any, Send], Awaitable[None]]


class ProtocolRoutes:
    """The routes of the protocol adapters, by method and path; built once from the served APIs."""

    def __init__(self, runtimes: list["ApiRuntime"], server: Any):
        from . import protocol_oip, protocol_openai

        self.server = server
        self.exact: dict[tuple[str, str], Handler] = {}
        #: API name -> its OIP model (APIs whose protocols list oip).
        self.oip: dict[str, protocol_oip.OipModel] = {}
        for runtime in runtimes:
            spec = runtime.spec
            protocols = protocols_of(spec)
            if "openai" in protocols:
                for (method, suffix), handler in protocol_openai.routes(runtime).items():
                    self.exact[(method, spec.endpoint + OPENAI_PREFIX + suffix)] = handler
            if "oip" in protocols:
                self.oip[spec.name] = protocol_oip.OipModel(runtime)
        self.server_wide = protocol_oip.ServerRoutes(server)

    def runtime_for(self, path: str) -> "ApiRuntime | None":
        """The API a protocol route belongs to (for the write-timeout metric), or None."""
        for (_, route), handler in self.exact.items():
            if route == path:
                return handler.__self__.runtime
        if path.startswith(OIP_MODELS_PREFIX + "/"):
            model = self.oip.get(path[len(OIP_MODELS_PREFIX) + 1:].split("/", 1)[0])
            return model.runtime if model is not None else None
        return None

    def match(self, method: str, path: str) -> Handler | None:
        handler = self.exact.get((method, path))
        if handler is not None:
            return handler
        if path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/"):
            return self._oip(method, path)
        return None

    def _oip(self, method: str, path: str) -> Handler | None:
        from .protocol_oip import model_route, not_found

        handler = None
        if path.startswith(OIP_HEALTH_PREFIX + "/") or path in (OIP_PREFIX, OIP_PREFIX + "/"):
            handler = self.server_wide.match(method, path)
        elif path.startswith(OIP_MODELS_PREFIX + "/"):
            handler = model_route(self.oip, method, path[len(OIP_MODELS_PREFIX) + 1:])
        return handler or not_found


def error_writer_for(path: str, spec: Any) -> ErrorWriter | None:
    """The error shape a response on `path` takes when it is a protocol route (`myelin local`'s router answers
    some itself: 401, 404, 413, 503 while loading): OIP's, OpenAI's, or None for the contract's own."""
    from . import protocol_oip, protocol_openai

    if path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/"):
        return protocol_oip.write_error
    if spec is not None and "openai" in protocols_of(spec) and path.startswith(
            spec.endpoint + OPENAI_PREFIX + "/"):
        return protocol_openai.write_error
    return None
