"""The router's own scale-to-zero metrics under `myelin local`, merged into its /metrics.

The router holds requests for an API scaled to zero and starts its process, so it is the one that sees cold
starts: the same names as in the cluster (contract.py), kept across the API's processes (each cold start is a
new one), so the counter only goes up while `myelin local` runs.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .. import contract as c
from ..metrics import COLD_START_BUCKETS

#: Families the router reports itself: the API processes' own copies are left out of the merge.
OWN = (c.COLD_STARTS, c.COLD_START_DURATION, c.HELD_REQUESTS)


class ScaleToZeroMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._cold_starts = Counter(c.COLD_STARTS, "Cold starts: an API scaled to zero loaded for held requests.",
                                    [c.LABEL_API], registry=self.registry)
        self._duration = Histogram(c.COLD_START_DURATION, "Seconds from the first held request to the API's readiness.",
                                   [c.LABEL_API], buckets=COLD_START_BUCKETS, registry=self.registry)
        self._held = Gauge(c.HELD_REQUESTS, "Requests held while their API starts (scale to zero).", [c.LABEL_API],
                           registry=self.registry)

    def register(self, api: str) -> None:
        """Series at 0 from the start, so the first cold start shows as an increase."""
        self._cold_starts.labels(api)
        self._duration.labels(api)
        self._held.labels(api).set(0)

    def cold_start(self, api: str, seconds: float) -> None:
        self._cold_starts.labels(api).inc()
        self._duration.labels(api).observe(seconds)

    def held(self, api: str, count: int) -> None:
        self._held.labels(api).set(count)
