"""`kind: TrafficSplitter` under `myelin local`: the router spreads a splitter's requests over its APIs by weight
and copies each to the shadow, as the ALB (weights) and the edge mirror (shadow) do in the cloud.

Kept apart from router.py and manager.py, which call it through two hooks: the manager's sync hands a splitter's
spec to `serve` (no process: a splitter is routing), and the router hands a request on a splitter's endpoint to
`LocalSplitter.forward`, which picks an API and calls the router's own forward path for it, with the path moved
from the splitter's endpoint to the API's. So the API's keys, limits, disconnect handling and log line apply to a
split request exactly as to a direct one.

The shadow gets a copy of the request once its body is complete, sent in the background: its answer is read and
thrown away, its errors and slowness are counted and never seen by the client. Every copy has an owner and a
bound: at most `SHADOW_MAX_IN_FLIGHT` copies in flight per splitter, and at most `SHADOW_MAX_BUFFERED_BYTES` of
copied bodies held; a request beyond either (or larger than the shadow's serving.max_body_size, or arriving while
the shadow is not serving) is not mirrored, and counted in myelin_shadow_dropped_total{reason}.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from pathlib import Path
from typing import Any, Callable

import httpx
from prometheus_client import CollectorRegistry, Counter

from .. import contract as c
from ..spec import SPEC_FILE, SpecError, TrafficSplitterSpec, is_splitter, load_api_spec, splitter_problems
from .child import ApiProcess, ChildState

#: Copies of requests in flight to the shadow, per splitter; one beyond is dropped (reason "busy").
SHADOW_MAX_IN_FLIGHT = 64
#: Bytes of request bodies held for the shadow, per splitter; a copy beyond is dropped (reason "buffer_full").
SHADOW_MAX_BUFFERED_BYTES = 64 * 2**20
#: A copy still unanswered this long after the shadow's serving.timeout is abandoned (status "timeout").
SHADOW_GRACE_S = 5.0
#: Seeds the weighted choice (tests use it to make a run reproducible); unset, every run draws afresh.
SEED_ENV = "MYELIN_LOCAL_SPLIT_SEED"

DROP_BUSY = "busy"
DROP_BUFFER = "buffer_full"
DROP_TOO_LARGE = "too_large"
DROP_NOT_READY = "not_ready"
DROP_CLIENT_GONE = "client_gone"
DROP_NOT_READ = "not_read"  # the API's forward refused the request before reading its body (401, 413, 503)


class SplitMetrics:
    """The router's own splitter metrics (contract.py), merged into its /metrics: which API each split request
    went to, and what became of each copy sent to (or dropped before) the shadow."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = [c.LABEL_SPLITTER, c.LABEL_API]
        self.requests = Counter(c.SPLIT_REQUESTS, "Requests a TrafficSplitter sent to each of its APIs.", labels,
                                registry=self.registry)
        self.shadow = Counter(c.SHADOW_REQUESTS, "Copies of a splitter's requests answered by its shadow (status: "
                              "the shadow's HTTP status, or error/timeout).", [*labels, c.LABEL_STATUS],
                              registry=self.registry)
        self.dropped = Counter(c.SHADOW_DROPPED, "Requests of a splitter not copied to its shadow, by reason.",
                               [*labels, c.LABEL_REASON], registry=self.registry)

    def register(self, spec: TrafficSplitterSpec) -> None:
        """Series at 0 from the start, so a dashboard's rate shows the first request."""
        for target in spec.weighted:
            self.requests.labels(spec.name, target.name)


def serve(server: Any, api: Any, spec: TrafficSplitterSpec) -> None:
    """The manager's sync hook for a splitter folder: checked against the other folders' specs on disk, then
    routed (a process serving this folder before, when it was an API, is retired). A bad splitter is refused
    and the previous version, if any, keeps routing."""
    source = str(api.folder / SPEC_FILE)
    problems = splitter_problems(spec, _others(server, api.folder))
    if problems:
        server._refuse(api, spec.name, str(SpecError(source, problems)))
        return
    old = api.serving
    api.serving = None
    api.restart_at = None
    api.splitter = LocalSplitter(server, spec)
    api.error = api.traceback = api.refused = None
    server.split_metrics.register(spec)
    routes = {endpoint: a for endpoint, a in server.routes.items() if a is not api}
    routes[spec.endpoint] = api
    server.routes = routes
    split = ", ".join(f"{t.name} {t.weight}%" for t in spec.weighted)
    shadow = f", shadow {spec.shadow.name}" if spec.shadow else ""
    server.console.ready(spec.name, f"{server.base_url}{spec.endpoint}  (splits: {split}{shadow})", None, 1)
    if old is not None:
        server._retire(old, 30.0)


def _others(server: Any, folder: Path) -> dict[str, Any]:
    """name -> spec of every other folder's api.yaml that parses (the splitter is checked against these)."""
    specs: dict[str, Any] = {}
    for other in server.folders():
        if other == folder or not (other / SPEC_FILE).is_file():
            continue
        with contextlib.suppress(SpecError):
            spec = load_api_spec(other)
            specs.setdefault(spec.name, spec)
    return specs


class LocalSplitter:
    """One splitter's routing: the weighted choice, the shadow's copies and their bounds, its counts."""

    def __init__(self, server: Any, spec: TrafficSplitterSpec, rng: random.Random | None = None):
        self.server = server
        self.spec = spec
        self.names = [t.name for t in spec.weighted]
        self.weights = [t.weight for t in spec.weighted]
        seed = os.environ.get(SEED_ENV)
        self.rng = rng or random.Random(seed)
        self.sent = {name: 0 for name in self.names}
        self.shadow_in_flight = 0
        self.shadow_buffered = 0
        self.shadow_answered = 0
        self.shadow_failed = 0
        self.shadow_dropped: dict[str, int] = {}
        self._tasks: set[asyncio.Task] = set()

    # ------------------------------------------------------------------ what /info shows
    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "endpoint": self.spec.endpoint,
            "apis": [{"name": n, "weight": w, "requests": self.sent[n]} for n, w in zip(self.names, self.weights)],
        }
        if self.spec.shadow is not None:
            out["shadow"] = {"name": self.spec.shadow.name, "in_flight": self.shadow_in_flight,
                             "answered": self.shadow_answered, "failed": self.shadow_failed,
                             "dropped": dict(self.shadow_dropped)}
        return out

    # ------------------------------------------------------------------ routing
    def _api(self, name: str) -> Any:
        """The served API of that name, if it is one a splitter may use now (it may have changed since)."""
        for api in self.server.apis.values():
            spec = api.spec
            if spec is not None and spec.name == name and not is_splitter(spec):
                return api
        return None

    def pick(self) -> str:
        return self.rng.choices(self.names, weights=self.weights)[0]

    async def forward(self, router: Any, splitter_api: Any, scope: dict, receive: Any, send: Any) -> None:
        """One request on the splitter's endpoint: to an API by weight (through the router's forward path, with
        the path moved to that API's endpoint), and a copy to the shadow."""
        from .router import _request_id

        name = self.pick()
        target = self._api(name)
        if target is None or target.spec.kind != "RealtimeAPI" or target.scales_to_zero:
            why = ("is not served here" if target is None else
                   "is no longer a RealtimeAPI with min_replicas 1 or more")
            await router._reply(splitter_api, scope, send, 503, "not_ready",
                                f"splitter {self.spec.name}: its API {name} {why}; the console and "
                                f"{c.INFO_PATH} say more", _request_id(scope), [(b"retry-after", b"5")])
            return
        self.sent[name] += 1
        self.server.split_metrics.requests.labels(self.spec.name, name).inc()
        # The request id is decided here, so the API's answer and the shadow's log carry the same one.
        scope = _with_request_id(scope, _request_id(scope))
        copy = self._mirror(scope) if self.spec.shadow is not None else None
        try:
            await router._forward(target, _moved(scope, self.spec.endpoint, target.spec.endpoint),
                                  copy.receive_from(receive) if copy is not None else receive, send)
        finally:
            if copy is not None:
                copy.give_up(DROP_NOT_READ)  # the API's forward never read the whole body (refused, failed)

    # ------------------------------------------------------------------ the shadow
    def _drop(self, reason: str) -> None:
        assert self.spec.shadow is not None
        self.shadow_dropped[reason] = self.shadow_dropped.get(reason, 0) + 1
        self.server.split_metrics.dropped.labels(self.spec.name, self.spec.shadow.name, reason).inc()

    def _mirror(self, scope: dict) -> "_BodyCopy | None":
        """Take a shadow slot for this request: the copy of its body to make as the API's forward reads it (sent
        once complete), or None when nothing is to be copied (dropped, or sent already: a request with no body)."""
        shadow = self._api(self.spec.shadow.name)
        child = shadow.serving if shadow is not None else None
        if child is None or child.state is not ChildState.READY or child.client is None:
            self._drop(DROP_NOT_READY)
            return None
        if self.shadow_in_flight >= SHADOW_MAX_IN_FLIGHT:
            self._drop(DROP_BUSY)
            return None
        declared = _content_length(scope["headers"])
        if declared is not None and declared > child.max_body:
            self._drop(DROP_TOO_LARGE)
            return None
        self.shadow_in_flight += 1  # a slot from now: released when the copy is answered or dropped
        if declared == 0 or (declared is None and not _has_header(scope["headers"], b"transfer-encoding")):
            self._send_copy(scope, shadow, child, b"")  # no body: nothing to wait for
            return None
        return _BodyCopy(self, scope, shadow, child)

    def _reserve(self, size: int) -> bool:
        if self.shadow_buffered + size > SHADOW_MAX_BUFFERED_BYTES:
            return False
        self.shadow_buffered += size
        return True

    def _release(self, size: int) -> None:
        self.shadow_buffered -= size

    def _send_copy(self, scope: dict, shadow: Any, child: ApiProcess, body: bytes, reserved: int = 0) -> None:
        task = asyncio.get_running_loop().create_task(self._copy(scope, shadow, child, body, reserved))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _copy(self, scope: dict, shadow: Any, child: ApiProcess, body: bytes, reserved: int) -> None:
        """The shadow's copy: same method, headers and body, at the shadow's endpoint; its answer read and
        discarded. Never raises: whatever happens here is the shadow's, not the client's."""
        from .router import _forwarded_headers, _request_id, _upstream_url

        status = "error"
        client = child.client
        child.in_flight += 1  # a reload waits for it, as for any request sent to this process
        try:
            if client is None:
                raise httpx.ConnectError("the shadow's process stopped")
            moved = _moved(scope, self.spec.endpoint, shadow.spec.endpoint)
            headers = [(k, v) for k, v in _forwarded_headers(scope["headers"], _request_id(scope))
                       if k.lower() not in (b"content-length", b"transfer-encoding")]
            request = httpx.Request(scope["method"], _upstream_url(moved), headers=headers,
                                    content=body if body or scope["method"] not in ("GET", "HEAD") else None)
            timeout = shadow.spec.serving.timeout.seconds + SHADOW_GRACE_S
            try:
                status = str(await asyncio.wait_for(_discard(client, request), timeout))
            except asyncio.TimeoutError:
                status = "timeout"
        except (httpx.HTTPError, OSError, RuntimeError):
            status = "error"
        finally:
            child.in_flight -= 1
            self._release(reserved)
            self.shadow_in_flight -= 1
            if status.isdigit() and int(status) < 500:
                self.shadow_answered += 1
            else:
                self.shadow_failed += 1
            self.server.split_metrics.shadow.labels(self.spec.name, shadow.name, status).inc()
            shadow.last_active = time.monotonic()


class _BodyCopy:
    """The client's body as the API's forward reads it, copied for the shadow until it is complete."""

    def __init__(self, splitter: LocalSplitter, scope: dict, shadow: Any, child: ApiProcess):
        self.splitter = splitter
        self.scope = scope
        self.shadow = shadow
        self.child = child
        self.parts: list[bytes] | None = []
        self.size = 0

    def give_up(self, reason: str) -> None:
        """No copy after all (the body went over a bound, the client left, or it was never read whole)."""
        if self.parts is not None:
            self.parts = None
            self.splitter._release(self.size)
            self.splitter.shadow_in_flight -= 1
            self.splitter._drop(reason)

    def receive_from(self, receive: Callable[[], Any]) -> Callable[[], Any]:
        async def tee() -> dict:
            message = await receive()
            if self.parts is None:
                return message
            if message["type"] == "http.disconnect":
                self.give_up(DROP_CLIENT_GONE)
                return message
            chunk = message.get("body", b"")
            if chunk:
                if self.size + len(chunk) > self.child.max_body:
                    self.give_up(DROP_TOO_LARGE)
                    return message
                if not self.splitter._reserve(len(chunk)):
                    self.give_up(DROP_BUFFER)
                    return message
                self.size += len(chunk)
                self.parts.append(chunk)
            if not message.get("more_body", False):
                body, self.parts = b"".join(self.parts), None
                self.splitter._send_copy(self.scope, self.shadow, self.child, body, reserved=self.size)
            return message

        return tee


async def _discard(client: httpx.AsyncClient, request: httpx.Request) -> int:
    """Send, read the answer to its end without keeping it, return its status."""
    response = await client.send(request, stream=True)
    try:
        async for _ in response.aiter_raw():
            pass
    finally:
        await response.aclose()
    return response.status_code


def _moved(scope: dict, old: str, new: str) -> dict:
    """The scope with its path moved from the splitter's endpoint to an API's (`/split/x` -> `/api/x`). Endpoints
    hold only unreserved characters, so the raw path starts with the same bytes as the decoded one."""
    path = scope["path"]
    moved = dict(scope)
    moved["path"] = new + path[len(old):]
    raw = scope.get("raw_path")
    if raw is not None:
        moved["raw_path"] = new.encode() + raw[len(old.encode()):]
    return moved


def _with_request_id(scope: dict, request_id: str) -> dict:
    if any(k == b"x-request-id" for k, _ in scope["headers"]):
        return scope
    return {**scope, "headers": [*scope["headers"], (b"x-request-id", request_id.encode("latin-1"))]}


def _has_header(headers: list[tuple[bytes, bytes]], name: bytes) -> bool:
    return any(k.lower() == name for k, _ in headers)


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for key, value in headers:
        if key.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
