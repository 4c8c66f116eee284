"""One served API's lifecycle: load the predictor, become ready, drain, close.

`ApiRuntime` owns the state machine (loading → ready | failed; ready → draining → stopped), the
count of requests in flight (what a drain or a reload waits for, and the autoscaling gauge), and,
once loaded, the `Invoker` that runs predictions. The HTTP front door is `endpoint.py`.
"""

from __future__ import annotations

import asyncio
import enum
import os
import threading
import traceback
from pathlib import Path
from typing import Any

from .errors import HTTPError, overloaded
from .http_io import ApiKeys
from .invoke import Invoker, deliver
from .loader import LoadError, Predictor, load_predictor
from .logs import RequestLog
from .metrics import ApiMetrics
from .spec import ApiSpec


class State(str, enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    DRAINING = "draining"
    STOPPED = "stopped"


class ApiRuntime:
    def __init__(self, folder: Path, spec: ApiSpec, metrics: ApiMetrics, log: RequestLog, processes: int | None = None):
        self.folder = Path(folder)
        self.spec = spec
        self.name = spec.name
        self.endpoint = spec.endpoint
        self.metrics = metrics
        self.log = log
        self.state = State.LOADING
        self.load_error: LoadError | None = None
        self.predictor: Predictor | None = None
        self.invoker: Invoker | None = None
        self.api_keys: ApiKeys | None = None
        serving = spec.serving
        # Per-replica limits are shared across the replica's processes (`myelin local` runs one process).
        self.max_concurrency = serving.per_process(serving.max_concurrency, processes)
        self.max_queue_length = serving.per_process(serving.max_queue_length, processes)
        self.timeout = serving.timeout.seconds
        self.max_body = serving.max_body_bytes
        self.in_flight = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._idle: asyncio.Event | None = None

    #: What this process does for the API: answer its HTTP routes (API keys needed), run the predictor.
    #: An AsyncAPI's gateway only answers, its worker only runs the predictor (asyncapi/runtime.py).
    serves_requests = True
    runs_predictor = True
    #: AsyncAPI: POST submits a job and GET <endpoint>/<id> reads it (asyncapi/runtime.py).
    asynchronous = False

    # ---------------------------------------------------------------- lifecycle
    def prepare(self) -> None:
        """Blocking set-up a kind needs before the predictor loads (raise LoadError to fail the API)."""

    def load(self) -> None:
        """Blocking: import and construct the predictor (called in a thread; the loop keeps answering probes)."""
        predictor = None
        try:
            self.prepare()
            auth = self.spec.networking.auth
            if auth is not None and self.serves_requests:
                raw = os.environ.get(auth.api_keys_env, "")
                keys = [k.strip() for k in raw.split(",") if k.strip()]
                if not keys:
                    raise LoadError(
                        self.name, f"{self.folder / 'api.yaml'} networking.auth.api_keys_env",
                        f"environment variable {auth.api_keys_env} is empty or unset; refusing to serve without keys",
                    )
                self.api_keys = ApiKeys(keys, auth.header)
            if self.runs_predictor:
                predictor = load_predictor(self.folder, self.spec)
        except LoadError as err:
            self.load_error = err
            self.state = State.FAILED
            return
        except Exception as err:  # noqa: BLE001 - e.g. a bad predictor.env value: fail clearly, never hang in LOADING
            self.load_error = LoadError(self.name, str(self.folder / "api.yaml"), f"{type(err).__name__}: {err}",
                                        traceback.format_exc())
            self.state = State.FAILED
            return
        if predictor is not None:
            self.predictor = predictor
            self.invoker = Invoker(self.name, self.spec, predictor, self.max_concurrency, self.max_queue_length,
                                   self.metrics.batch_size.observe)
            if self.loop is not None:
                self.invoker.bind(self.loop)
        if self.state is State.LOADING:  # a drain that began during the load wins
            self.state = State.READY

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        self._idle.set()
        # A private daemon thread, not the loop's default executor: interpreter shutdown would wait for
        # that one, so a SIGTERM during a long model load could not exit within the grace period.
        loaded = self.loop.create_future()
        loop = self.loop

        def load_in_thread() -> None:
            try:
                self.load()
            finally:
                try:
                    loop.call_soon_threadsafe(deliver, loaded, None)
                except RuntimeError:  # the loop closed while loading: the process is exiting
                    pass

        threading.Thread(target=load_in_thread, name=f"load-{self.name}", daemon=True).start()
        await loaded
        if self.state is State.FAILED and self.load_error is not None:
            self.log.event(
                "error", "predictor failed to load", api=self.name, where=self.load_error.where,
                error=self.load_error.message, traceback=self.load_error.detail or None,
            )

    def begin_drain(self) -> None:
        if self.state is State.READY or self.state is State.LOADING:
            self.state = State.DRAINING

    async def drained(self, timeout: float) -> bool:
        """Wait until no request is in flight (True), or the timeout passes (False)."""
        if self._idle is None or self.in_flight == 0:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def close(self) -> None:
        self.state = State.STOPPED
        if self.invoker is not None:
            self.invoker.close()

    # ---------------------------------------------------------------- requests in flight
    def enter(self) -> None:
        """A request is in flight from here (a drain or reload waits for it)."""
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    def not_ready(self) -> HTTPError:
        """The error a request gets while this API cannot serve."""
        if self.state is State.FAILED and self.load_error is not None:
            return HTTPError(503, "not_ready", f"API {self.name} failed to load: {self.load_error}",
                             [(b"retry-after", b"30")])
        if self.state is State.DRAINING:
            err = overloaded(f"API {self.name} is shutting down; retry on another replica")
            err.error_type = "shutting_down"
            err.headers.append((b"connection", b"close"))
            return err
        return HTTPError(503, "not_ready", f"API {self.name} is {self.state.value}", [(b"retry-after", b"1")])

    # ---------------------------------------------------------------- introspection
    @property
    def waiting(self) -> int:
        return self.invoker.waiting if self.invoker is not None else 0

    def sample_metrics(self) -> None:
        self.metrics.sample(self.in_flight, self.waiting, self.state is State.READY)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"name": self.name, "endpoint": self.endpoint, "state": self.state.value,
                                "folder": str(self.folder), "in_flight": self.in_flight, "queued": self.waiting}
        if self.load_error is not None:
            info["error"] = {"where": self.load_error.where, "message": self.load_error.message}
        return info
