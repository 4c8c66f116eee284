"""Prometheus metrics, one set per API, for one process or a whole replica.

With `processes > 1` the supervisor sets PROMETHEUS_MULTIPROC_DIR before the
workers start, prometheus-client keeps each worker's values in shared files,
and any worker's `/metrics` reports the sum over the replica. Gauges are
sampled (not updated per request), so the hot path pays only for a counter
and a histogram, after the response has been sent.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import disable_created_metrics, multiprocess

from . import contract as c

disable_created_metrics()  # the _created series only add noise to every scrape

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """All of Myelin's metrics for this process; `api` label per API."""

    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir() is not None
        # In multiprocess mode values live in files; exposition reads them, so no registry is needed here.
        self.registry = None if self.multiprocess else CollectorRegistry()
        reg = self.registry
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

    def for_api(self, api: str) -> "ApiMetrics":
        return ApiMetrics(self, api)

    def exposition(self) -> bytes:
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


class ApiMetrics:
    """Label children resolved once, so a request costs a dict lookup, not a label resolution."""

    def __init__(self, metrics: Metrics, api: str):
        self._metrics = metrics
        self._api = api
        self._status: dict[int, object] = {}
        self.latency = metrics.latency.labels(api)
        self.batch_size = metrics.batch_size.labels(api)
        self._first_item = None
        self.in_flight = metrics.in_flight.labels(api)
        self.queue_length = metrics.queue_length.labels(api)
        self.ready = metrics.ready.labels(api)

    @property
    def first_item(self):
        """Time-to-first-item histogram; its series appears only for an API that has streamed."""
        if self._first_item is None:
            self._first_item = self._metrics.first_item.labels(self._api)
        return self._first_item

    def observe(self, status: int, seconds: float) -> None:
        counter = self._status.get(status)
        if counter is None:
            counter = self._status[status] = self._metrics.requests.labels(self._api, str(status))
        counter.inc()
        self.latency.observe(seconds)

    def sample(self, in_flight: int, queued: int, ready: bool) -> None:
        self.in_flight.set(in_flight)
        self.queue_length.set(queued)
        self.ready.set(1 if ready else 0)
