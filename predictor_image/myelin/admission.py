"""Admission control: bound what runs and what waits; refuse the rest at once.

At most `max_concurrency` calls run; at most `max_queue_length` wait for a
slot (FIFO). Anything beyond is refused with 503 + Retry-After instead of
queueing without bound, so latency and memory stay bounded under overload.
"""

from __future__ import annotations

import asyncio
from collections import deque

from .errors import overloaded


class AdmissionControl:
    def __init__(self, max_concurrency: int, max_queue_length: int):
        self.max_concurrency = max_concurrency
        self.max_queue_length = max_queue_length
        self.running = 0
        self._waiters: deque[asyncio.Future] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_acquire(self) -> asyncio.Future | None:
        """None: a slot is yours now. A future: wait for it (cancel to leave the queue). Raises 503 when full."""
        if self.running < self.max_concurrency and not self._waiters:
            self.running += 1
            return None
        if len(self._waiters) >= self.max_queue_length:
            raise overloaded()
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        return fut

    async def wait(self, waiter: asyncio.Future, deadline: float) -> bool:
        """Wait in the queue for a slot until `deadline` (event loop clock): True once it is held, False past it."""
        try:
            await asyncio.wait_for(waiter, deadline - asyncio.get_running_loop().time())
        except asyncio.TimeoutError:
            self.abandon(waiter)
            return False
        except BaseException:
            self.abandon(waiter)
            raise
        return True

    def abandon(self, fut: asyncio.Future) -> None:
        """A waiter gave up (deadline): leave the queue, or pass on a slot it was just handed."""
        if fut.done() and not fut.cancelled():
            self.release()
            return
        fut.cancel()
        try:
            self._waiters.remove(fut)
        except ValueError:
            pass

    def release(self) -> None:
        """A running call finished: hand its slot straight to the next waiter, if any."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.running -= 1
