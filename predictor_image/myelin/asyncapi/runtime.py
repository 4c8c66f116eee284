"""One AsyncAPI's lifecycle: the `ApiRuntime` state machine plus a job store and a worker.

By role (`myelin serve --role`, MYELIN_ROLE):
- `gateway`: opens the store, checks API keys, answers submit and status; loads no predictor;
- `worker`: opens the store, loads the predictor, runs jobs; its HTTP side is only the control routes;
- `all` (`myelin local`, and `myelin serve` by default): both in one process.

The store is chosen once from the settings (`store.open_store`) and opened in the load thread, so a
bad state directory or an unreachable queue fails the API clearly (readiness 503, the reason in the
log and `/info`), as a predictor that fails to load does. Background loops (the worker, the queue
depth sampler) run through the app's `spawn` hook; a drain stops claiming, lets running jobs finish
within `serving.drain_timeout` and hands the rest back to the queue.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .. import contract as c
from ..lifecycle import BodyBudget
from ..loader import LoadError
from ..logs import RequestLog
from ..metrics import Metrics
from ..runtime import ApiRuntime, State
from ..settings import Settings
from ..spec import AsyncApiSpec
from . import routes
from .metrics import JobMetrics
from .store import JobLimits, StoreError, StoreFull, Usage, open_store
from .worker import JobWorker

#: How often the queue depth gauge is refreshed from the store.
DEPTH_INTERVAL_S = 2.0
#: How long check_room lets submits through on one reading of the store's usage (see check_room).
USAGE_FRESH_S = 0.5


class AsyncApiRuntime(ApiRuntime):
    asynchronous = True

    def __init__(self, folder: Path, spec: AsyncApiSpec, metrics: Metrics, log: RequestLog, processes: int | None,
                 settings: Settings, spawn: Callable[[Any], asyncio.Task], body_budget: BodyBudget | None = None):
        super().__init__(folder, spec, metrics.for_api(spec.name, spec.target_in_flight), log, processes, settings,
                         body_budget)
        self.role = settings.role
        self.serves_requests = self.role in (c.ROLE_GATEWAY, c.ROLE_ALL)
        self.runs_predictor = self.role in (c.ROLE_WORKER, c.ROLE_ALL)
        self.store = open_store(settings, spec)
        self.store_limits = JobLimits.of(spec)
        self.stored_bytes: int | None = None
        #: check_room's last reading of the store's usage: (when, usage, submits and bytes let through since).
        self._usage_seen: tuple[float, Usage, int, int] | None = None
        self.jobs = JobMetrics(metrics, spec.name)
        self.worker = JobWorker(self) if self.runs_predictor else None
        self.queue_depth: int | None = None
        self._spawn = spawn
        self._sampler: asyncio.Task | None = None

    def spawn(self, coro: Any) -> asyncio.Task:
        return self._spawn(coro)

    # ---------------------------------------------------------------- lifecycle
    def prepare(self) -> None:
        try:
            self.store.open()
        except StoreError as err:
            raise LoadError(self.name, err.where, f"job store: {err.message}") from None

    async def start(self) -> None:
        await super().start()
        if self.state is not State.READY:
            return
        self._sampler = self.spawn(self._sample_depth())
        if self.worker is not None:
            self.worker.task = self.spawn(self.worker.run())

    def begin_drain(self) -> None:
        super().begin_drain()
        if self.worker is not None:
            self.worker.stop_claiming()

    async def drained(self, timeout: float) -> bool:
        """Stop taking jobs; wait for requests and running jobs; hand unfinished jobs back to the queue."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self.worker is not None:
            self.worker.stop_claiming()
        finished = await super().drained(timeout)
        if self.worker is not None:
            finished = await self.worker.stop(max(0.0, deadline - loop.time())) and finished
        return finished

    def close(self) -> None:
        super().close()
        if self.worker is not None:
            self.worker.stop_claiming()
        if self._sampler is not None:
            self._sampler.cancel()
        # The writer thread finishes what is pending; do not hold the event loop for it.
        threading.Thread(target=self.store.close, name=f"close-jobs-{self.name}", daemon=True).start()

    async def _sample_depth(self) -> None:
        while self.state in (State.READY, State.DRAINING):
            try:
                self.queue_depth = await self.store.depth()
                self.jobs.depth.set(self.queue_depth)
                if self.serves_requests:  # where submits are bounded (a worker alone stores no new job)
                    usage = await self.store.usage()
                    self.stored_bytes = usage.stored_bytes
                    self.jobs.stored_bytes.set(usage.stored_bytes)
            except Exception:  # noqa: BLE001 - the worker and the routes report store failures
                pass
            await asyncio.sleep(DEPTH_INTERVAL_S)

    async def check_room(self, content_length: int) -> None:
        """Before a submit's body is read: refuse it (StoreFull: 503 + Retry-After) when the store has no room for
        one more job of `content_length` bytes (0 when unknown) under jobs.max_queued / jobs.max_stored_bytes.
        The store checks again, exactly, with the body's real size, when it stores the job.

        A reading of the store's usage younger than USAGE_FRESH_S, plus every submit this process let through since,
        is enough to let one more through (far from the bounds, a submit costs no extra store read); a refusal is
        only ever made on a fresh reading."""
        incoming = max(0, content_length)
        now = time.monotonic()
        seen = self._usage_seen
        if seen is not None and now - seen[0] < USAGE_FRESH_S:
            usage, jobs, nbytes = seen[1], seen[2], seen[3]
            try:
                self.store_limits.check(Usage(usage.queued + jobs, usage.stored_bytes + nbytes), incoming)
            except StoreFull:
                pass  # looks full: read it again before refusing
            else:
                self._usage_seen = (seen[0], usage, jobs + 1, nbytes + incoming)
                return
        usage = await self.store.usage()
        self.store_limits.check(usage, incoming)
        self._usage_seen = (time.monotonic(), usage, 1, incoming)

    # ---------------------------------------------------------------- HTTP
    async def submit(self, scope: dict, receive: Any, send: Any) -> None:
        await routes.submit_job(self, scope, receive, send)

    async def status(self, job_id: str, scope: dict, receive: Any, send: Any) -> None:
        await routes.job_status(self, job_id, scope, receive, send)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(kind=self.spec.kind, role=self.role, queue_depth=self.queue_depth, stored_bytes=self.stored_bytes,
                    jobs_running=len(self.worker.running) if self.worker is not None else 0)
        return info
