"""Prometheus metrics, one set per API, for one process or a whole replica.

With `processes > 1` the supervisor sets PROMETHEUS_MULTIPROC_DIR before the
workers start, prometheus-client keeps each worker's values in shared files,
and any worker's `/metrics` reports the sum over the replica. Gauges are
sampled (not updated per request).

A request's count and latency (`ApiMetrics.observe`, after the response has
been sent) are two plain integers added to in one process: its status's count
and its latency bucket's, plus the latency sum. They are added into the
prometheus-client series (`Metrics.fold`) when `/metrics` is read, so a scrape
always sees every request answered before it, at a fraction of the per-request
cost of a locked counter and histogram. With PROMETHEUS_MULTIPROC_DIR set a
scrape may be answered by another worker, which cannot fold this one's
integers, so there each request goes to the shared series at once, as before.
"""

from __future__ import annotations

import os
from bisect import bisect_left

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client import disable_created_metrics, multiprocess

from . import contract as c

disable_created_metrics()  # the _created series only add noise to every scrape

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
COLD_START_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1800.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """All of Myelin's metrics for this process; `api` label per API."""

    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir() is not None
        self._apis: list[ApiMetrics] = []
        # In multiprocess mode values live in files; exposition reads them, so no registry is needed here.
        self.registry = None if self.multiprocess else CollectorRegistry()
        reg = self.registry
        if reg is not None:
            ProcessCollector(registry=reg)  # process_* (CPU seconds, resident memory, open fds, start time)
        self.requests = Counter(c.REQUESTS, "Prediction requests answered, by status code.", [c.LABEL_API, c.LABEL_STATUS], registry=reg)
        self.latency = Histogram(
            c.REQUEST_DURATION, "Prediction latency from arrival to response, seconds.", [c.LABEL_API],
            buckets=LATENCY_BUCKETS, registry=reg,
        )
        self.first_item = Histogram(
            c.TIME_TO_FIRST_ITEM, "Streaming predictions: time from arrival to the first item sent, seconds.",
            [c.LABEL_API], buckets=LATENCY_BUCKETS, registry=reg,
        )
        self.batch_size = Histogram(
            c.BATCH_SIZE, "Payloads per predict call with batching on.", [c.LABEL_API], buckets=BATCH_BUCKETS, registry=reg
        )
        gauge_mode = {"multiprocess_mode": "livesum"}
        self.in_flight = Gauge(
            c.IN_FLIGHT, "Requests admitted and not yet answered (running + queued); the autoscaling signal.",
            [c.LABEL_API], registry=reg, **gauge_mode,
        )
        self.queue_length = Gauge(c.QUEUE_LENGTH, "Requests waiting for the predictor.", [c.LABEL_API], registry=reg, **gauge_mode)
        self.ready = Gauge(c.READY_PROCESSES, "Server processes whose predictor is loaded and serving.", [c.LABEL_API], registry=reg, **gauge_mode)
        self.stuck = Gauge(
            c.STUCK, "Predictions still running past their request's deadline (answered 504, still holding a slot).",
            [c.LABEL_API], registry=reg, **gauge_mode,
        )
        self.model_load = Gauge(
            c.MODEL_LOAD, "Seconds the predictor took to load (import and __init__).", [c.LABEL_API], registry=reg,
            multiprocess_mode="livemax",
        )
        self.target_in_flight = Gauge(
            c.TARGET_IN_FLIGHT, "autoscaling.target_in_flight: in-flight requests per replica the autoscaler aims for.",
            [c.LABEL_API], registry=reg, multiprocess_mode="livemax",
        )
        self.cold_starts = Counter(
            c.COLD_STARTS, "Replicas woken from zero for held requests (autoscaling.min_replicas 0).", [c.LABEL_API],
            registry=reg,
        )
        self.cold_start_duration = Histogram(
            c.COLD_START_DURATION, "Seconds from the first held request's arrival to its replica's readiness.",
            [c.LABEL_API], buckets=COLD_START_BUCKETS, registry=reg,
        )
        self.rejected = Counter(
            c.REJECTED, "Prediction requests refused with 503 before running, by reason (overloaded, not_ready, "
            "shutting_down).", [c.LABEL_API, c.LABEL_REASON], registry=reg,
        )

        self.body_bytes = Gauge(
            c.BODY_BYTES_IN_FLIGHT, "Request body bytes being received now, reserved against "
            "MYELIN_MAX_BODY_BYTES_IN_FLIGHT (a declared Content-Length is reserved whole).", registry=reg, **gauge_mode,
        )
        self.write_timeouts = Counter(
            c.WRITE_TIMEOUTS, "Connections aborted because the client read none of the response for MYELIN_WRITE_TIMEOUT "
            "seconds (api is empty for the server's own routes).", [c.LABEL_API], registry=reg,
        )

    def for_api(self, api: str, target_in_flight: float | None = None) -> "ApiMetrics":
        api_metrics = ApiMetrics(self, api, target_in_flight)
        self._apis.append(api_metrics)
        return api_metrics

    def fold(self) -> None:
        """Every API's request counts and latencies since the last fold, into their Prometheus series."""
        for api_metrics in self._apis:
            api_metrics.fold()

    def exposition(self) -> bytes:
        self.fold()
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            # process_* of the worker that answers this scrape (each worker is one process of the replica).
            ProcessCollector(registry=registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


class ApiMetrics:
    """Label children resolved once, so a request costs a dict lookup, not a label resolution."""

    def __init__(self, metrics: Metrics, api: str, target_in_flight: float | None = None):
        self._metrics = metrics
        self._api = api
        self._status: dict[int, object] = {}
        # Every reason exists from the start at 0, so rate() sees the first refusal (a counter series that
        # appears already at 1 has no increase to show).
        self._rejected: dict[str, object] = {
            reason: metrics.rejected.labels(api, reason)
            for reason in (c.REJECT_OVERLOADED, c.REJECT_NOT_READY, c.REJECT_SHUTTING_DOWN)
        }
        if target_in_flight is not None:
            metrics.target_in_flight.labels(api).set(target_in_flight)
        self.latency = metrics.latency.labels(api)
        # Not folded yet (module docstring): requests per status, latencies per bucket (the last: +Inf), their sum.
        self._pending: dict[int, int] = {}
        self._bounds = self.latency._upper_bounds  # noqa: SLF001 - prometheus-client 0.26's Histogram child
        self._bucket_counts = [0] * len(self._bounds)
        self._latency_sum = 0.0
        if metrics.multiprocess:
            self.observe = self._observe_shared  # type: ignore[method-assign]
        self.batch_size = metrics.batch_size.labels(api)
        self._first_item = None
        self.in_flight = metrics.in_flight.labels(api)
        self.queue_length = metrics.queue_length.labels(api)
        self.ready = metrics.ready.labels(api)
        self.stuck = metrics.stuck.labels(api)

    @property
    def first_item(self):
        """Time-to-first-item histogram; its series appears only for an API that has streamed."""
        if self._first_item is None:
            self._first_item = self._metrics.first_item.labels(self._api)
        return self._first_item

    def observe(self, status: int, seconds: float) -> None:
        """One answered request: its status and latency (seconds), counted until the next `fold`."""
        pending = self._pending
        pending[status] = pending.get(status, 0) + 1
        self._bucket_counts[bisect_left(self._bounds, seconds)] += 1  # the first bucket whose bound is >= seconds
        self._latency_sum += seconds

    def _observe_shared(self, status: int, seconds: float) -> None:
        self._counter(status).inc()
        self.latency.observe(seconds)

    def _counter(self, status: int):
        counter = self._status.get(status)
        if counter is None:
            counter = self._status[status] = self._metrics.requests.labels(self._api, str(status))
        return counter

    def fold(self) -> None:
        """The requests observed since the last fold, into `myelin_requests_total` and the latency histogram."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        for status, n in pending.items():
            self._counter(status).inc(n)
        counts, self._bucket_counts = self._bucket_counts, [0] * len(self._bounds)
        buckets = self.latency._buckets  # noqa: SLF001 - per-bucket (not cumulative) values, as observe() adds
        for i, n in enumerate(counts):
            if n:
                buckets[i].inc(n)
        total, self._latency_sum = self._latency_sum, 0.0
        self.latency._sum.inc(total)  # noqa: SLF001

    def cold_start_series(self) -> tuple[object, object]:
        """This API's cold-start counter and histogram (created, at 0, only for APIs that scale to zero)."""
        m = self._metrics
        return m.cold_starts.labels(self._api), m.cold_start_duration.labels(self._api)

    def loaded(self, seconds: float) -> None:
        self._metrics.model_load.labels(self._api).set(seconds)

    def reject(self, reason: str) -> None:
        counter = self._rejected.get(reason)
        if counter is None:
            counter = self._rejected[reason] = self._metrics.rejected.labels(self._api, reason)
        counter.inc()

    def sample(self, in_flight: int, queued: int, ready: bool, stuck: int = 0) -> None:
        self.in_flight.set(in_flight)
        self.queue_length.set(queued)
        self.ready.set(1 if ready else 0)
        self.stuck.set(stuck)
