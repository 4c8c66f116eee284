"""One served API's lifecycle: load the predictor, become ready, drain, close.

`ApiRuntime` owns the state machine (loading → ready | failed; ready → draining → stopped), the
API's `lifecycle.Lifecycle` (one ticket per request: admission, the in-flight count a drain or a
reload waits for and the autoscaler reads, stuck accounting), and, once loaded, the `Invoker` that
runs predictions. The HTTP front door is `endpoint.py`.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import os
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from .contract import API_KEYS_FILE_SUFFIX
from .errors import HTTPError, overloaded
from .http_io import ApiKeys
from .invoke import Invoker, deliver
from .lifecycle import BodyBudget, Lifecycle
from .loader import LoadError, Predictor, load_predictor
from .logs import RequestLog
from .metrics import ApiMetrics
from .settings import Settings
from .spec import ApiSpec


def _read_keys(env_name: str) -> str:
    """The comma-separated keys: from the file named by `<env_name>_FILE` (the cluster mounts a Secret there, so
    the keys are not in the environment that subprocesses inherit), else from `<env_name>` itself."""
    path = os.environ.get(env_name + API_KEYS_FILE_SUFFIX, "")
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read().replace("\n", ",")
        except OSError:
            return ""
    return os.environ.get(env_name, "")


class State(str, enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    DRAINING = "draining"
    STOPPED = "stopped"


class ApiRuntime:
    def __init__(self, folder: Path, spec: ApiSpec, metrics: ApiMetrics, log: RequestLog, processes: int | None = None,
                 settings: Settings | None = None, body_budget: BodyBudget | None = None):
        self.folder = Path(folder)
        self.settings = settings or Settings()
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
        self.model = None  # model_files.FetchedModel once `predictor.model_uri` is on disk
        serving = spec.serving
        # Per-replica limits are shared across the replica's processes (`myelin local` runs one process).
        self.max_concurrency = serving.per_process(serving.max_concurrency, processes)
        self.max_queue_length = serving.per_process(serving.max_queue_length, processes)
        self.timeout = serving.timeout.seconds
        self.ready_at: float | None = None  # Unix time the predictor became ready
        self.arrival: Any = None  # an ArrivalClock when the load balancer stamps arrival times (arrival.py)
        self.max_body = serving.max_body_bytes
        #: One ticket per request or job; the body budget is the process's, shared by its APIs.
        self.lifecycle = Lifecycle(self.max_concurrency + self.max_queue_length,
                                   body_budget or BodyBudget(self.settings.max_body_bytes_in_flight))
        self.load_seconds = 0.0
        #: Streaming responses running now (streaming.Stream): ended with an error event when a drain gives up.
        self.streams: set[Any] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stuck_timeout = serving.stuck_timeout.seconds
        # Keys are read before anything else, so requests are authenticated even while loading or failed.
        self._keys_error: LoadError | None = None
        auth = spec.networking.auth
        if auth is not None:
            raw = _read_keys(auth.api_keys_env)
            keys = [k.strip() for k in raw.split(",") if k.strip()]
            if keys:
                self.api_keys = ApiKeys(keys, auth.header)
            else:
                self._keys_error = LoadError(
                    self.name, f"{self.folder / 'api.yaml'} networking.auth.api_keys_env",
                    f"environment variable {auth.api_keys_env} (or the file named by "
                    f"{auth.api_keys_env}{API_KEYS_FILE_SUFFIX}) is empty or unset; refusing to serve without keys",
                )

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
            if self._keys_error is not None and self.serves_requests:  # an AsyncAPI's worker answers no request
                raise self._keys_error
            if self.runs_predictor:
                model_dir = self._fetch_model() if self.spec.predictor.model_uri else None
                predictor = load_predictor(self.folder, self.spec, model_dir)
        except LoadError as err:
            self._failed(err)
            return
        except Exception as err:  # noqa: BLE001 - e.g. a bad predictor.env value: fail clearly, never hang in LOADING
            self._failed(LoadError(self.name, str(self.folder / "api.yaml"), f"{type(err).__name__}: {err}",
                                   traceback.format_exc()))
            return
        if predictor is not None:
            self.predictor = predictor
            self.invoker = Invoker(self.name, self.spec, predictor, self.max_concurrency, self.max_queue_length,
                                   self.metrics.batch_size.observe)
            self.lifecycle.call_capacity = self.invoker.call_capacity
            if self.loop is not None:
                self.invoker.bind(self.loop)
        if self.state is State.LOADING:  # a drain that began during the load wins
            self.state = State.READY
            self.ready_at = time.time()

    def _failed(self, err: LoadError) -> None:
        self.load_error = err
        self.state = State.FAILED
        if self.model is not None:
            self.model.release()  # not served: the cache may evict it

    def _fetch_model(self) -> Path:
        """Blocking: `predictor.model_uri` on local disk (downloaded or from the cache); LoadError if it cannot be."""
        from .model_files import ModelCache, ModelFetchError

        cache = ModelCache.from_settings(self.settings)
        try:
            self.model = cache.fetch(self.spec.predictor.model_uri, self.folder, self._report_from_thread, api=self.name)
        except ModelFetchError as err:
            raise LoadError(self.name, f"{self.folder / 'api.yaml'} predictor.model_uri", str(err)) from None
        expected = self.settings.model_version
        if expected and self.model.version is not None and self.model.version != expected:
            self._report_from_thread(
                "warning", "model changed since deploy: serving the files now at the URI; run pulumi up to roll",
                api=self.name, uri=self.model.uri, version=self.model.version, deployed_version=expected)
        return self.model.path

    def _report_from_thread(self, level: str, message: str, **fields: Any) -> None:
        """Log from the load (or transfer) threads: lines are written on the event loop, as all others."""
        loop = self.loop
        if loop is None:
            self.log.event(level, message, **fields)
            return
        try:
            loop.call_soon_threadsafe(functools.partial(self.log.event, level, message, **fields))
        except RuntimeError:  # the loop closed: the process is exiting
            pass

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.lifecycle.loop = self.loop
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

        started = time.perf_counter()
        threading.Thread(target=load_in_thread, name=f"load-{self.name}", daemon=True).start()
        await loaded
        self.load_seconds = time.perf_counter() - started
        if self.state is State.READY:
            self.metrics.loaded(self.load_seconds)
        if self.state is State.FAILED and self.load_error is not None:
            self.log.event(
                "error", "predictor failed to load", api=self.name, where=self.load_error.where,
                error=self.load_error.message, traceback=self.load_error.detail or None,
            )

    def begin_drain(self) -> None:
        if self.state is State.READY or self.state is State.LOADING:
            self.state = State.DRAINING

    async def drained(self, timeout: float) -> bool:
        """Wait until no request is in flight, stuck calls included (True), or the timeout passes (False)."""
        return await self.lifecycle.idle(timeout)

    def end_streams(self) -> None:
        """End every running stream with a `shutting_down` error event (a drain's grace period is over)."""
        for stream in list(self.streams):
            stream.shut_down()

    def close(self) -> None:
        self.state = State.STOPPED
        self.end_streams()
        if self.invoker is not None:
            self.invoker.close()
        if self.model is not None:
            self.model.release()  # the cache may evict it once no process serves it

    # ---------------------------------------------------------------- requests in flight
    @property
    def in_flight(self) -> int:
        """Requests (and jobs) holding a ticket: admitted and not released, stuck calls included."""
        return self.lifecycle.in_flight

    def not_ready(self, request_id: str) -> HTTPError:
        """The error a request gets while this API cannot serve (never the load error itself: that is logged)."""
        if self.state is State.FAILED:
            return HTTPError(503, "not_ready", f"API {self.name} is not available: its predictor failed to load; the "
                             f"server log has the details (request id {request_id})", [(b"retry-after", b"30")])
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

    @property
    def stuck(self) -> int:
        """Requests whose call still runs past their deadline (as of the last `Lifecycle.scan`)."""
        return self.lifecycle.stuck

    @property
    def wedged(self) -> bool:
        """Every call slot is held by a call running past its request's deadline."""
        return self.invoker is not None and self.lifecycle.wedged()

    def stuck_for(self) -> float:
        """Seconds this API has been wedged (0 when it is not)."""
        return self.lifecycle.stuck_for()

    def sample_metrics(self) -> None:
        # A stuck call's request was answered (504) but its ticket is held until it returns: it stays "in
        # flight" for the autoscaler, or a wedged replica would look idle and be scaled down.
        lifecycle = self.lifecycle
        lifecycle.scan()
        self.metrics.sample(lifecycle.in_flight, self.waiting,
                            self.state is State.READY and lifecycle.wedged_since is None, lifecycle.stuck)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"name": self.name, "endpoint": self.endpoint, "state": self.state.value,
                                "folder": str(self.folder), "in_flight": self.in_flight, "queued": self.waiting}
        if self.load_error is not None:
            info["error"] = {"where": self.load_error.where, "message": self.load_error.message}
        if self.model is not None:
            info["model"] = self.model.describe()
        return info
