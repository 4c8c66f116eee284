"""When a request arrived at the load balancer, for APIs scaled to zero in the cluster.

There, KEDA's interceptor holds a request while the API's first replica starts, and forwards it once the replica
is ready; nothing it adds tells the replica how long the request waited. The ALB's trace header does: an ALB
puts `X-Amzn-Trace-Id: Root=1-<8 hex digits: Unix time in seconds>-<24 hex>` on every request (AWS, "Request
tracing for your Application Load Balancer"), and the interceptor passes request headers through. With
`MYELIN_ARRIVAL_HEADER` naming that header (the cluster sets it on APIs with autoscaling.min_replicas 0):

- the request keeps its serving.timeout deadline from arrival: the time it was held is taken off;
- a request that arrived before this replica was ready was held for it: the replica was woken from zero. The
  first such request counts one cold start (`myelin_cold_starts_total`) and observes the time from its arrival
  to the replica's readiness (`myelin_cold_start_duration_seconds`), once per replica, however many processes.

Any other header name is read as a Unix time in seconds (`1700000000.25`), for proxies that stamp their own.
The header's resolution is one second, and a client may send its own: a time in the future counts as no wait,
and only an arrival more than a second before readiness counts as held.
"""

from __future__ import annotations

import os
import time
from typing import Iterable

ALB_TRACE_HEADER = b"x-amzn-trace-id"
_ROOT = b"Root=1-"


def parse_arrival(header: bytes, value: bytes) -> float | None:
    """Unix time a request arrived at, from the header's value; None when it does not say."""
    if header == ALB_TRACE_HEADER:
        at = value.find(_ROOT)
        if at < 0:
            return None
        digits = value[at + len(_ROOT):at + len(_ROOT) + 8]
        try:
            return float(int(digits, 16)) if len(digits) == 8 else None
        except ValueError:
            return None
    try:
        stamp = float(value)
    except ValueError:
        return None
    return stamp if stamp == stamp and stamp > 0 else None  # not NaN


class ArrivalClock:
    """Reads a request's arrival from `header`; counts this replica's cold start once."""

    def __init__(self, header: str, cold_starts: object, cold_start_seconds: object,
                 marker_dir: str | None = None):
        self.header = header.lower().encode("latin-1")
        self._cold_starts = cold_starts
        self._cold_start_seconds = cold_start_seconds
        # With processes > 1, the first worker to see a held request counts the replica's cold start.
        self._marker = os.path.join(marker_dir, "cold-start") if marker_dir else None
        self.counted = False

    def held_seconds(self, headers: Iterable[tuple[bytes, bytes]], ready_at: float | None) -> float:
        """How long the request waited before reaching this process (0 if unknown); records a cold start."""
        for key, value in headers:
            if key == self.header:
                arrival = parse_arrival(self.header, value)
                break
        else:
            return 0.0
        if arrival is None:
            return 0.0
        now = time.time()
        if ready_at is not None and not self.counted and arrival + 1.0 < ready_at:
            self._count(ready_at - arrival)
        return max(0.0, now - arrival)

    def _count(self, seconds: float) -> None:
        self.counted = True
        if self._marker is not None:
            try:
                os.close(os.open(self._marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except FileExistsError:
                return  # another process of this replica counted it
            except OSError:
                pass
        self._cold_starts.inc()
        self._cold_start_seconds.observe(seconds)
