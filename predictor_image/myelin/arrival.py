"""When a request arrived at the load balancer, for APIs scaled to zero in the cluster.

There, KEDA's interceptor holds a request while the API's first replica starts, and forwards it once the replica
is ready; nothing it adds tells the replica how long the request waited. The ALB's trace header does: an ALB
puts `X-Amzn-Trace-Id: Root=1-<8 hex digits: Unix time in seconds>-<24 hex>` on every request (AWS, "Request
tracing for your Application Load Balancer"), and the interceptor passes request headers through. With
`MYELIN_ARRIVAL_HEADER` naming that header (the cluster sets it on APIs with autoscaling.min_replicas 0):

- the request keeps its serving.timeout deadline from arrival: the time it was held is taken off;
- a request that was waiting before this replica started was held for it: the replica was woken from zero. The
  first such request counts one cold start (`myelin_cold_starts_total`) and observes the time from its arrival
  to the replica's readiness (`myelin_cold_start_duration_seconds`), once per replica, however many processes.

Any other header name is read as a Unix time in seconds (`1700000000.25`), for proxies that stamp their own.

The header comes from the client as much as from the ALB (an ALB keeps a client's `Root` and only adds `Self`),
so an arrival is believed only where a real one can be:

- **Plausible**: no older than the request's own budget (serving.timeout) plus `ARRIVAL_MARGIN_S`, and not in the
  future. The interceptor gives a held request up at serving.timeout, so a real arrival is never older than that
  plus the trip to the replica, the header's one-second resolution and the clocks' difference: the margin. Any
  other value is ignored, as if the header were absent: the request keeps its whole timeout and counts nothing.
- **A cold start is a start from zero**: a request counts one only when it arrived more than a second (the
  header's resolution) before this *replica* started, meaning the first of its processes: it was waiting before the
  replica existed, so it is what the replica was started for, and the replica had no earlier ready process. A
  worker the supervisor replaced later, or a replica started while others served (scaled out from one), sees only
  requests that arrived after the replica started and counts nothing. The replica's start is shared between its
  processes through a marker in its metrics folder. A container restarted in place by Kubernetes starts with a new
  folder and is a new replica by this rule; its held requests did wait for a start from nothing.
"""

from __future__ import annotations

import os
import time
from typing import Iterable

ALB_TRACE_HEADER = b"x-amzn-trace-id"
_ROOT = b"Root=1-"
#: How much older than serving.timeout a believable arrival may be (seconds): the trip from the interceptor to
#: the replica, the ALB header's one-second resolution and the difference between the ALB's and the node's clocks.
ARRIVAL_MARGIN_S = 5.0
#: An arrival counts as held only this much before the replica started: the ALB header's resolution.
_RESOLUTION_S = 1.0


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
    return stamp if stamp == stamp and 0 < stamp < float("inf") else None  # not NaN, not infinite


def process_started_at() -> float:
    """Unix time this process started, as the kernel has it (what `process_start_time_seconds` exports); the
    present moment where /proc cannot tell."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        ticks = int(stat[stat.rindex(b")") + 2:].split()[19])  # field 22, starttime, in clock ticks since boot
        with open("/proc/stat", "rb") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def replica_started_at(marker_dir: str | None, own: float) -> float:
    """When this replica's first process started: `own` for a replica of one process; with several, the start
    the first of them recorded in the replica's shared folder (a process started later reads it)."""
    if marker_dir is None:
        return own
    marker = os.path.join(marker_dir, "replica-started")
    try:
        with open(marker, "rb") as f:
            return min(own, float(f.read()))
    except (OSError, ValueError):
        pass
    scratch = f"{marker}.{os.getpid()}"
    try:
        fd = os.open(scratch, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            os.write(fd, repr(own).encode())
        finally:
            os.close(fd)
        try:
            os.link(scratch, marker)  # atomic, and refused when another process recorded it first
        except FileExistsError:
            with open(marker, "rb") as f:
                return min(own, float(f.read()))
        finally:
            os.unlink(scratch)
    except (OSError, ValueError):
        pass
    return own


class ArrivalClock:
    """Reads a request's arrival from `header`; counts this replica's cold start once.

    `budget` is the request's serving.timeout: arrivals older than it plus ARRIVAL_MARGIN_S are not believed.
    `started_at` is this process's start (the kernel's, by default)."""

    def __init__(self, header: str, cold_starts: object, cold_start_seconds: object, *, budget: float,
                 marker_dir: str | None = None, started_at: float | None = None):
        self.header = header.lower().encode("latin-1")
        self._cold_starts = cold_starts
        self._cold_start_seconds = cold_start_seconds
        self.max_age = budget + ARRIVAL_MARGIN_S
        self.replica_started_at = replica_started_at(
            marker_dir, started_at if started_at is not None else process_started_at())
        # With processes > 1, the first worker to see a held request counts the replica's cold start.
        self._marker = os.path.join(marker_dir, "cold-start") if marker_dir else None
        self.counted = False

    def arrival(self, headers: Iterable[tuple[bytes, bytes]], now: float) -> float | None:
        """The request's arrival if it has a believable one: not in the future, not older than the budget allows."""
        for key, value in headers:
            if key == self.header:
                arrival = parse_arrival(self.header, value)
                break
        else:
            return None
        if arrival is None or arrival > now:
            return None
        if now - arrival > self.max_age:
            return None
        return arrival

    def held_seconds(self, headers: Iterable[tuple[bytes, bytes]], ready_at: float | None) -> float:
        """How long the request waited before reaching this process (0 if unknown or unbelievable); records the
        replica's cold start when this request was waiting before the replica started."""
        now = time.time()
        arrival = self.arrival(headers, now)
        if arrival is None:
            return 0.0
        if (ready_at is not None and not self.counted and arrival + _RESOLUTION_S < self.replica_started_at
                and arrival < ready_at):
            self._count(ready_at - arrival)
        return now - arrival

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
