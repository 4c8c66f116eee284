"""`kind: TrafficSplitter` under `myelin local`: the router spreads a splitter's requests over its APIs by weight
and copies each to the shadow, as the ALB (weights) and the weighted APIs' runtimes (shadow) do in the cloud.

Kept apart from router.py and manager.py, which call it through two hooks: the manager's sync hands a splitter's
spec to `serve` (no process: a splitter is routing), and the router hands a request on a splitter's endpoint to
`LocalSplitter.forward`, which picks an API and calls the router's own forward path for it, with the path moved
from the splitter's endpoint to the API's. So the API's keys, limits, disconnect handling and log line apply to a
split request exactly as to a direct one.

The shadow gets a copy of the request once its body is complete, sent in the background: its answer is read and
thrown away, its errors and slowness are counted and never seen by the client. Every copy has an owner and a
bound: at most `SHADOW_MAX_IN_FLIGHT` copies in flight per splitter, and at most `SHADOW_MAX_BUFFERED_BYTES` of
copied bodies held; a request beyond either (or larger than the shadow's serving.max_body_size, or arriving while
the shadow is not serving) is not mirrored, and counted in myelin_shadow_dropped_total{reason}. The bounds, the
body's copy and the delivery are ../shadow.py's, shared with the cloud's copies.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter

from .. import contract as c
from ..spec import SPEC_FILE, SpecError, TrafficSplitterSpec, is_splitter, load_api_spec, splitter_problems
from ..http_io import declared_length
from ..shadow import (
    DROP_NOT_READ,
    DROP_NOT_READY,
    SHADOW_GRACE_S,
    SHADOW_MAX_BUFFERED_BYTES,  # noqa: F401 - the bounds, named here as the docs say
    SHADOW_MAX_IN_FLIGHT,  # noqa: F401
    BodyCopy,
    ShadowSlots,
    deliver,
    discard,
    has_no_body,
    shadow_counters,
)
from .child import ApiProcess, ChildState

#: Seeds the weighted choice (tests use it to make a run reproducible); unset, every run draws afresh.
SEED_ENV = "MYELIN_LOCAL_SPLIT_SEED"


class SplitMetrics:
    """The router's own splitter metrics (contract.py), merged into its /metrics: which API each split request
    went to, and what became of each copy sent to (or dropped before) the shadow."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = [c.LABEL_SPLITTER, c.LABEL_API]
        self.requests = Counter(c.SPLIT_REQUESTS, "Requests a TrafficSplitter sent to each of its APIs.", labels,
                                registry=self.registry)
        self.shadow, self.dropped = shadow_counters(self.registry)

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
        metrics = server.split_metrics
        self.shadow = (ShadowSlots(spec.name, spec.shadow.name, metrics.shadow, metrics.dropped)
                       if spec.shadow is not None else None)
        self._tasks: set[asyncio.Task] = set()

    # ------------------------------------------------------------------ what /info shows
    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "endpoint": self.spec.endpoint,
            "apis": [{"name": n, "weight": w, "requests": self.sent[n]} for n, w in zip(self.names, self.weights)],
        }
        if self.shadow is not None:
            out["shadow"] = self.shadow.describe()
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

    # ------------------------------------------------------------------ the shadow (../shadow.py)
    def _mirror(self, scope: dict) -> "BodyCopy | None":
        """Take a shadow slot for this request: the copy of its body to make as the API's forward reads it (sent
        once complete), or None when nothing is to be copied (dropped, or sent already: a request with no body)."""
        slots = self.shadow
        shadow = self._api(self.spec.shadow.name)
        child = shadow.serving if shadow is not None else None
        if child is None or child.state is not ChildState.READY or child.client is None:
            slots.drop(DROP_NOT_READY)
            return None
        if not slots.take(declared_length(scope["headers"]), child.max_body):
            return None
        if has_no_body(scope["headers"]):
            self._send_copy(scope, shadow, child, b"")  # no body: nothing to wait for
            return None
        return BodyCopy(slots, child.max_body,
                        lambda body, size: self._send_copy(scope, shadow, child, body, reserved=size))

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
            if client is not None:  # else the shadow's process stopped: "error"
                def request() -> httpx.Request:
                    moved = _moved(scope, self.spec.endpoint, shadow.spec.endpoint)
                    headers = [(k, v) for k, v in _forwarded_headers(scope["headers"], _request_id(scope))
                               if k.lower() not in (b"content-length", b"transfer-encoding")]
                    return httpx.Request(scope["method"], _upstream_url(moved), headers=headers,
                                         content=body if body or scope["method"] not in ("GET", "HEAD") else None)

                status = await deliver(lambda: discard(client, request()),
                                       shadow.spec.serving.timeout.seconds + SHADOW_GRACE_S)
        finally:
            child.in_flight -= 1
            self.shadow.done(status, reserved)
            shadow.last_active = time.monotonic()


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
