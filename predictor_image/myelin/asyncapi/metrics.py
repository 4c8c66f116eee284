"""An AsyncAPI's metrics: queue depth, stored bytes, jobs by outcome, job duration; beside the request metrics.

Registered on the process's `Metrics` registry (or prometheus-client's multiprocess files), once per
`Metrics` object, so they appear in the same `/metrics` exposition, only for AsyncAPIs.
"""

from __future__ import annotations

import weakref

from prometheus_client import Counter, Gauge, Histogram

from .. import contract as c
from ..metrics import Metrics

#: One attempt of a job, seconds: from milliseconds to hours.
JOB_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)

_families: "weakref.WeakKeyDictionary[Metrics, tuple[Gauge, Counter, Histogram, Gauge]]" = weakref.WeakKeyDictionary()


def _for(metrics: Metrics) -> tuple[Gauge, Counter, Histogram, Gauge]:
    families = _families.get(metrics)
    if families is None:
        reg = metrics.registry
        families = _families[metrics] = (
            # Every process of a replica reads the same queue: report the value, not a sum.
            Gauge(c.ASYNC_QUEUE_DEPTH, "Jobs waiting to start (sampled from the job store).", [c.LABEL_API],
                  registry=reg, multiprocess_mode="livemax"),
            Counter(c.ASYNC_JOBS, "Jobs by what happened to them: submitted, completed, failed, dead_lettered, "
                    "retried, returned.", [c.LABEL_API, c.LABEL_STATUS], registry=reg),
            Histogram(c.ASYNC_JOB_DURATION, "One attempt of a job, from its start to its outcome, seconds.",
                      [c.LABEL_API], buckets=JOB_BUCKETS, registry=reg),
            Gauge(c.ASYNC_STORED_BYTES, "Bytes the job store holds for the API: payloads, stored headers, results, "
                  "errors, dead letters (bounded by jobs.max_stored_bytes; sampled from the job store).",
                  [c.LABEL_API], registry=reg, multiprocess_mode="livemax"),
        )
    return families


class JobMetrics:
    """One AsyncAPI's children, resolved once."""

    def __init__(self, metrics: Metrics, api: str):
        depth, jobs, duration, stored = _for(metrics)
        self.depth = depth.labels(api)
        self.stored_bytes = stored.labels(api)
        self.duration = duration.labels(api)
        self._jobs = {status: jobs.labels(api, status) for status in c.JOB_STATUSES}

    def count(self, status: str) -> None:
        self._jobs[status].inc()
