"""The job worker: claims jobs from the store and runs each through the API's `Invoker`.

The invocation core is the HTTP path's (`invoke.Invoker`: admission, the `serving.timeout`
deadline, sync predictors in the API's thread pool), reached through the second front door: a job
instead of a request. At most `serving.max_concurrency` jobs run per process; a claim asks only for
free slots, so the store, not this process, holds what waits.

Outcomes: the result is stored (`completed`); a `PredictorError`, any other exception or the
deadline fail the job at once (no retry) with the error in the job's status and the traceback in
the log only; a job started more than `jobs.max_attempts` times (its workers kept dying) is failed
and dead-lettered. On a drain the worker stops claiming, lets running jobs finish within the grace
period, and hands the rest back to the queue uncounted.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from typing import TYPE_CHECKING, Any

import orjson
from starlette.datastructures import Headers, QueryParams
from starlette.responses import Response

from .. import codec
from .. import contract as c
from ..errors import HTTPError, PredictorError
from ..runtime import State
from .store import Claim

if TYPE_CHECKING:
    from .runtime import AsyncApiRuntime

#: Longest pause between claims while the store keeps failing.
MAX_BACKOFF_S = 30.0
#: After the grace period: how long handing unfinished jobs back may take.
RETURN_S = 10.0


def encode_result(result: Any) -> tuple[bytes, str]:
    """A predictor's result -> (stored bytes, content type), as the realtime path would send it."""
    if isinstance(result, Response):
        body = getattr(result, "body", None)
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise TypeError("a streaming Response cannot be stored as a job result; return the data itself")
        ctype = result.headers.get("content-type", "application/octet-stream")
        if codec.media_type(ctype.encode("latin-1"))[0] == b"application/json":
            try:
                orjson.loads(body)  # embedded as-is in the status document, so it must be valid JSON
            except orjson.JSONDecodeError:
                ctype = "application/octet-stream"
        return bytes(body), ctype
    body, ctype = codec.encode(result)
    return body, ctype.decode("latin-1")


def _error(err: PredictorError | HTTPError) -> dict[str, Any]:
    return {"type": err.error_type, "message": err.message, "status_code": err.status_code}


class JobWorker:
    def __init__(self, runtime: "AsyncApiRuntime"):
        self.runtime = runtime
        self.store = runtime.store
        self.capacity = runtime.max_concurrency
        self.visibility = runtime.spec.visibility_timeout
        self.max_attempts = runtime.spec.jobs.max_attempts
        self.running: dict[asyncio.Task, Claim] = {}
        self.claiming = True
        self.task: asyncio.Task | None = None
        self._slot: asyncio.Event | None = None

    # ---------------------------------------------------------------- the claim loop
    def _busy(self) -> int:
        invoker = self.runtime.invoker
        # A sync predict past its deadline keeps its admission slot until it returns.
        held = invoker.admission.running if invoker is not None else 0
        return max(len(self.running), held)

    async def run(self) -> None:
        runtime = self.runtime
        self._slot = asyncio.Event()
        backoff = 0.0
        while self.claiming and runtime.state is State.READY:
            free = self.capacity - self._busy()
            if free <= 0:
                self._slot.clear()
                try:  # woken by a finished job; the timeout covers a slot freed by a late thread
                    await asyncio.wait_for(self._slot.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
                continue
            try:
                claims = await self.store.claim(free, self.visibility)
                backoff = 0.0
            except Exception as err:  # noqa: BLE001 - keep serving; the store may come back
                backoff = min(MAX_BACKOFF_S, backoff * 2 or 0.5)
                runtime.log.event("error", "job store unavailable; retrying", api=runtime.name,
                                  error=f"{type(err).__name__}: {err}", retry_in_s=backoff)
                await self._pause(backoff)
                continue
            for claim in claims:
                if not self.claiming or runtime.state is not State.READY:
                    await self._give_back(claim)  # a drain began while we were claiming
                elif claim.attempt > self.max_attempts:
                    await self._dead_letter(claim)
                else:
                    if claim.attempt > 1:
                        runtime.jobs.count(c.JOB_RETRIED)
                    task = runtime.spawn(self._run(claim))
                    self.running[task] = claim
                    task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self.running.pop(task, None)
        if self._slot is not None:
            self._slot.set()

    async def _pause(self, seconds: float) -> None:
        self._slot.clear()
        try:
            await asyncio.wait_for(self._slot.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    def stop_claiming(self) -> None:
        self.claiming = False
        if self._slot is not None:
            self._slot.set()
        self.store.wake()

    async def stop(self, grace: float) -> bool:
        """Stop claiming; running jobs get `grace` seconds, then go back to the queue. True if all finished."""
        self.stop_claiming()
        pending = set(self.running)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=grace)
        for task in pending:
            task.cancel()  # the job task hands its claim back (below)
        rest = [*pending, *([self.task] if self.task is not None else [])]
        if rest:
            await asyncio.wait(rest, timeout=RETURN_S)
        return not pending

    # ---------------------------------------------------------------- one job
    async def _run(self, claim: Claim) -> None:
        runtime = self.runtime
        # The job's ticket (lifecycle.py): in flight, and stuck past its deadline, as a request would be.
        ticket = runtime.lifecycle.enter(runtime.loop.time() + runtime.timeout)
        start = time.perf_counter()
        error: dict[str, Any] | None = None
        body, ctype = b"", ""
        try:
            payload = await codec.decode(claim.content_type.encode("latin-1"), claim.body)
            predictor = runtime.predictor
            kwargs: dict[str, Any] = {}
            if predictor.wants_query_params:
                kwargs["query_params"] = QueryParams(claim.query_string)
            if predictor.wants_headers:
                kwargs["headers"] = Headers(raw=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in claim.headers])
            result = await runtime.invoker.invoke(payload, kwargs, ticket)
        except asyncio.CancelledError:
            ticket.finish()
            await self._give_back(claim)
            raise
        except HTTPError as err:
            if err.status_code == 503:  # no free slot after all: not the job's fault, run it later
                ticket.finish()
                await self._give_back(claim)
                return
            error = _error(err)
        except PredictorError as err:
            error = _error(err)
        except Exception as err:  # noqa: BLE001 - details to the log only
            error = {"type": "predictor_failure", "message": "the predictor failed; see the server log", "status_code": 500}
            runtime.log.event("error", "predict raised", api=runtime.name, job_id=claim.id, attempt=claim.attempt,
                              error=f"{type(err).__name__}: {err}", traceback="".join(traceback.format_exception(err)))
        else:
            try:
                body, ctype = encode_result(result)
            except TypeError as err:
                error = {"type": "internal", "status_code": 500,
                         "message": "the predictor's result could not be stored; see the server log"}
                runtime.log.event("error", "result could not be encoded", api=runtime.name, job_id=claim.id,
                                  error=str(err))
            else:
                error = await self._room_for(claim, body)
                if error is not None:
                    body = b""
        try:
            await self._record(claim, error, body, ctype, time.perf_counter() - start)
        finally:
            ticket.finish()

    async def _room_for(self, claim: Claim, result: bytes) -> dict[str, Any] | None:
        """jobs.max_stored_bytes bounds results too: a result that does not fit beside what the store holds (less
        this job's payload, which completing it drops) fails the job with `result_too_large`, and is not stored."""
        runtime = self.runtime
        limit = runtime.store_limits.max_stored_bytes
        held = 0
        if len(result) <= limit:
            try:
                held = max(0, (await self.store.usage()).stored_bytes - len(claim.body))
            except Exception:  # noqa: BLE001 - the store's own calls report its failures; a result under the limit
                return None
            if held + len(result) <= limit:
                return None
        runtime.log.event("error", "result too large for the job store", api=runtime.name, job_id=claim.id,
                          result_bytes=len(result), stored_bytes=held, max_stored_bytes=limit)
        return {"type": "result_too_large", "status_code": 507,
                "message": f"the result ({len(result)} bytes) does not fit in the job store beside the "
                           f"{held} bytes it holds for this API (jobs.max_stored_bytes: {limit})"}

    async def _record(self, claim: Claim, error: dict[str, Any] | None, body: bytes, ctype: str, seconds: float) -> None:
        runtime = self.runtime
        try:
            if error is None:
                stored = await self.store.complete(claim, body, ctype)
                status = c.JOB_COMPLETED
            else:
                stored = await self.store.fail(claim, error)
                status = c.JOB_FAILED
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - the outcome is lost: the job runs again after its visibility timeout
            runtime.log.job("error", runtime.name, claim.id, claim.attempt, "unrecorded", seconds,
                            f"the outcome could not be stored ({type(err).__name__}: {err}); the job runs again "
                            "after its visibility timeout")
            return
        runtime.jobs.duration.observe(seconds)
        if not stored:  # another attempt of this job recorded its outcome first: keep that one
            runtime.log.job("info", runtime.name, claim.id, claim.attempt, "duplicate", seconds)
            return
        runtime.jobs.count(status)
        runtime.log.job("info" if error is None else "error", runtime.name, claim.id, claim.attempt, status, seconds,
                        error["type"] if error else None)

    async def _give_back(self, claim: Claim) -> None:
        runtime = self.runtime
        try:
            await self.store.release(claim)
        except Exception as err:  # noqa: BLE001 - then it comes back after its visibility timeout
            runtime.log.event("error", "could not hand a job back; it runs again after its visibility timeout",
                              api=runtime.name, job_id=claim.id, error=f"{type(err).__name__}: {err}")
            return
        runtime.jobs.count(c.JOB_RETURNED)
        runtime.log.job("info", runtime.name, claim.id, claim.attempt, "returned", 0.0)

    async def _dead_letter(self, claim: Claim) -> None:
        runtime = self.runtime
        attempts = claim.attempt - 1
        error = {"type": "attempts_exhausted", "status_code": 500, "message": (
            f"the job was started {attempts} time(s) (jobs.max_attempts) and its worker stopped each time before "
            "it finished (crash, kill or node loss); see the server log")}
        try:
            stored = await self.store.fail(claim, error, dead_letter=True)
        except Exception as err:  # noqa: BLE001 - it will be delivered again and dead-lettered then
            runtime.log.event("error", "could not dead-letter a job", api=runtime.name, job_id=claim.id,
                              error=f"{type(err).__name__}: {err}")
            return
        if stored:
            runtime.jobs.count(c.JOB_DEAD_LETTERED)
            runtime.log.job("error", runtime.name, claim.id, attempts, c.JOB_DEAD_LETTERED, 0.0, error["type"])
