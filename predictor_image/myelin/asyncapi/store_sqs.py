"""The cloud job store: an SQS queue for job ids, an S3 prefix for payloads and outcomes (boto3).

Per job, under `s3://bucket/prefix/jobs/<id>/`:
- `request`: one line of JSON (content type, query string, headers, created_at), a newline, then the
  body as received; written before the id is sent to the queue, so a 202 means both are stored;
- `attempt`: the running attempt (number, started_at); written when a worker starts the job;
- `outcome`: the result (its own content type) or the error (JSON), written once with
  `If-None-Match: *`: the first outcome wins, a duplicate delivery's is refused by S3 itself.

The status is read back from these objects: outcome → completed/failed, attempt → in_progress,
request → in_queue. Every object carries `created-at` metadata; the runtime answers 404 past the
retention and the bucket's lifecycle rule deletes the objects.

Attempts are SQS's ApproximateReceiveCount plus the attempts of earlier messages of the job (the
`myelin-prior-attempts` message attribute): a job handed back on shutdown is sent again as a new
message carrying its attempts, so a shutdown does not count as one. After `max_attempts` the worker
records the failure and moves the job to the dead-letter queue itself (the queue's redrive policy,
`max_attempts + 1` receives, is only a backstop). AWS_ENDPOINT_URL points boto3 at moto in tests.

Bounds (jobs.max_queued, jobs.max_stored_bytes) are approximate here, for what SQS and S3 can tell:
- jobs not finished are the queue's ApproximateNumberOfMessages + ...NotVisible + ...Delayed, read at
  most every `QUEUE_SAMPLE_S`, plus the jobs this process sent since the last reading;
- bytes stored are the sizes of the objects under the API's prefix (ListObjectsV2), summed at most every
  `STORED_SAMPLE_S` in the background, plus what this process stored since.
`enqueue` checks these before it writes anything, so a refused job stores nothing. A lone gateway
process is held to the bounds within SQS's own approximation; several gateway replicas each add their
own recent submits only, so together they can overshoot by what the others stored since the last
reading (at most `STORED_SAMPLE_S` of their submits for bytes, `QUEUE_SAMPLE_S` for jobs), and SQS's
approximate counts may lag further. Objects past the retention count until S3's lifecycle rule
deletes them (they are still stored).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import orjson

from .. import contract as c
from .store import (COMPLETED, FAILED, IN_PROGRESS, IN_QUEUE, Claim, JobLimits, JobState, StoreError, Submission,
                    Usage, valid_job_id)

_REGION_IN_URL = re.compile(r"^https?://sqs[.-]([a-z0-9-]+)\.amazonaws\.com")
_MISSING = {"NoSuchKey", "404", "NotFound"}
_TAKEN = {"PreconditionFailed", "412"}
_GONE_RECEIPT = {"ReceiptHandleIsInvalid", "InvalidParameterValue", "AWS.SimpleQueueService.NonExistentQueue"}


def _code(err: Exception) -> str:
    return str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))


def _created(meta: dict[str, str]) -> float:
    return float(meta.get("created-at", "0") or 0)


class SqsJobStore:
    #: SQS long polling: an idle worker's receive waits this long for a message.
    LONG_POLL_S = 2

    #: How stale the queue's counts and the stored bytes may be before they are read again (seconds).
    QUEUE_SAMPLE_S = 1.0
    STORED_SAMPLE_S = 60.0

    def __init__(self, queue_url: str, dead_letter_queue_url: str, storage_uri: str, retention_s: float,
                 limits: JobLimits | None = None):
        self.limits = limits
        # Readings of the queue and of the objects' sizes: (monotonic time, value), and what this process
        # added since (a job sent, the bytes of its request object).
        self._queued: tuple[float, int] | None = None
        self._stored: tuple[float, int] | None = None
        self._sent_since = 0
        self._put_since = 0
        self._refreshing: dict[str, asyncio.Task] = {}
        self.queue_url = queue_url
        self.dead_letter_queue_url = dead_letter_queue_url
        self.storage_uri = storage_uri
        self.retention = retention_s
        bucket, _, prefix = storage_uri[len("s3://"):].partition("/")
        self.bucket = bucket
        self.prefix = (prefix.rstrip("/") + "/" if prefix.strip("/") else "") + c.ASYNC_JOBS_PREFIX
        self.sqs: Any = None
        self.s3: Any = None
        self._pool: ThreadPoolExecutor | None = None

    # ---------------------------------------------------------------- set-up
    def open(self) -> None:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError

        session = boto3.session.Session()
        region = session.region_name
        if not region:
            match = _REGION_IN_URL.match(self.queue_url)
            region = match.group(1) if match else None
        if not region:
            raise StoreError(c.ASYNC_QUEUE_URL_ENV, "no AWS region: set AWS_REGION (the cluster sets it on every pod)")
        config = Config(retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=32,
                        connect_timeout=5, read_timeout=self.LONG_POLL_S + 15)
        self.sqs = session.client("sqs", region_name=region, config=config)
        self.s3 = session.client("s3", region_name=region, config=config)
        checks = ((c.ASYNC_QUEUE_URL_ENV, self.queue_url, lambda: self.sqs.get_queue_attributes(
                      QueueUrl=self.queue_url, AttributeNames=["QueueArn"])),
                  (c.ASYNC_DEAD_LETTER_QUEUE_URL_ENV, self.dead_letter_queue_url, lambda: self.sqs.get_queue_attributes(
                      QueueUrl=self.dead_letter_queue_url, AttributeNames=["QueueArn"])),
                  (c.ASYNC_STORAGE_URI_ENV, self.storage_uri, lambda: self.s3.head_bucket(Bucket=self.bucket)))
        for var, value, check in checks:
            try:
                check()
            except ClientError as err:
                raise StoreError(f"{var}={value}", f"{_code(err) or 'error'}: {err}") from None
            except BotoCoreError as err:
                raise StoreError(f"{var}={value}", str(err)) from None
        self._pool = ThreadPoolExecutor(32, thread_name_prefix="jobs-aws")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def wake(self) -> None:
        """Nothing to interrupt: a receive waits at most LONG_POLL_S."""

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self._pool is None:
            raise StoreError(self.queue_url, "the job store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._pool, partial(fn, *args, **kwargs))

    def _key(self, job_id: str, part: str) -> str:
        return f"{self.prefix}{job_id}/{part}"

    def _object(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            return self.s3.get_object(Bucket=self.bucket, Key=key)
        except ClientError as err:
            if _code(err) in _MISSING:
                return None
            raise

    def _delete_message(self, receipt: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=receipt)
        except ClientError as err:
            if _code(err) not in _GONE_RECEIPT:
                raise

    # ---------------------------------------------------------------- usage (approximate: see the module's doc)
    def _count_queued(self) -> int:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                 "ApproximateNumberOfMessagesDelayed"]
        attrs = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=names).get("Attributes", {})
        return sum(int(attrs.get(name, 0)) for name in names)

    def _count_stored(self) -> int:
        total, more = 0, {}
        while True:
            page = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, **more)
            total += sum(int(item["Size"]) for item in page.get("Contents", []))
            if not page.get("IsTruncated"):
                return total
            more = {"ContinuationToken": page["NextContinuationToken"]}

    async def _sample(self, what: str) -> None:
        # What this process added before the reading began is in the reading; what it adds meanwhile may not be,
        # and stays counted (counted twice at worst: on the safe side).
        try:
            if what == "queued":
                before = self._sent_since
                self._queued = (time.monotonic(), await self._run(self._count_queued))
                self._sent_since -= before
            else:
                before = self._put_since
                self._stored = (time.monotonic(), await self._run(self._count_stored))
                self._put_since -= before
        except Exception:
            if (self._queued if what == "queued" else self._stored) is None:
                raise  # nothing to go by: the submit fails as the store is unavailable
            # else the last reading stands (plus what this process added) and is tried again next time

    async def _fresh(self) -> None:
        """Start a reading of whatever is stale; wait only when there is none yet (later ones run behind)."""
        now = time.monotonic()
        waits = []
        for what, reading, every in (("queued", self._queued, self.QUEUE_SAMPLE_S),
                                     ("stored", self._stored, self.STORED_SAMPLE_S)):
            if reading is not None and now - reading[0] < every:
                continue
            task = self._refreshing.get(what)
            if task is None or task.done():
                task = self._refreshing[what] = asyncio.ensure_future(self._sample(what))
            if reading is None:
                waits.append(task)
        if waits:
            await asyncio.gather(*waits)

    def _current(self) -> Usage:
        queued = self._queued[1] if self._queued is not None else 0
        stored = self._stored[1] if self._stored is not None else 0
        return Usage(queued + self._sent_since, stored + self._put_since)

    async def usage(self) -> Usage:
        await self._fresh()
        return self._current()

    # ---------------------------------------------------------------- the Protocol
    async def enqueue(self, job: Submission) -> None:
        meta = orjson.dumps({"created_at": job.created_at, "content_type": job.content_type,
                             "query_string": job.query_string, "headers": job.headers})
        size = len(meta) + 1 + len(job.body)
        if self.limits is not None:
            await self._fresh()
            self.limits.check(self._current(), size)  # StoreFull: nothing written
        self._put_since += size  # counted before the writes, so concurrent submits see it
        self._sent_since += 1
        try:
            await self._run(self.s3.put_object, Bucket=self.bucket, Key=self._key(job.id, "request"),
                            Body=meta + b"\n" + job.body, ContentType="application/octet-stream",
                            Metadata={"created-at": repr(job.created_at)})
        except BaseException:
            self._put_since -= size
            self._sent_since -= 1
            raise
        try:
            await self._run(self.sqs.send_message, QueueUrl=self.queue_url,
                            MessageBody=orjson.dumps({"id": job.id}).decode())
        except BaseException:
            self._sent_since -= 1  # the request object is stored, its job is not queued
            raise

    async def claim(self, n: int, visibility_timeout: float) -> list[Claim]:
        response = await self._run(
            self.sqs.receive_message, QueueUrl=self.queue_url, MaxNumberOfMessages=max(1, min(n, 10)),
            VisibilityTimeout=int(math.ceil(visibility_timeout)), WaitTimeSeconds=self.LONG_POLL_S,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
            MessageAttributeNames=[c.ASYNC_PRIOR_ATTEMPTS_ATTRIBUTE])
        messages = response.get("Messages", [])
        if not messages:
            return []
        prepared = await asyncio.gather(*(self._run(self._prepare, m) for m in messages), return_exceptions=True)
        claims = [p for p in prepared if isinstance(p, Claim)]
        errors = [p for p in prepared if isinstance(p, BaseException)]
        if errors:  # hand the good ones back uncounted; the worker logs the error and retries later
            for claim in claims:
                await self.release(claim)
            raise errors[0]
        return claims

    def _prepare(self, message: dict[str, Any]) -> Claim | None:
        """Blocking: one received message -> a Claim, or None (done, expired or malformed: deleted)."""
        receipt = message["ReceiptHandle"]
        try:
            job_id = str(orjson.loads(message["Body"])["id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            job_id = ""
        if not valid_job_id(job_id):
            self._delete_message(receipt)
            return None
        count = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        prior = int(message.get("MessageAttributes", {}).get(c.ASYNC_PRIOR_ATTEMPTS_ATTRIBUTE, {}).get("StringValue", "0"))
        try:
            if self._object(self._key(job_id, "outcome")) is not None:  # done by an earlier delivery
                self._delete_message(receipt)
                return None
            request = self._object(self._key(job_id, "request"))
            data = request["Body"].read() if request is not None else b""
            head, _, body = data.partition(b"\n")
            meta = orjson.loads(head) if head else None
            if meta is None or meta["created_at"] <= time.time() - self.retention:  # expired
                self._delete_message(receipt)
                return None
            started = time.time()
            attempt = prior + count
            self.s3.put_object(Bucket=self.bucket, Key=self._key(job_id, "attempt"),
                               Body=orjson.dumps({"attempt": attempt, "started_at": started}),
                               ContentType="application/json",
                               Metadata={"created-at": repr(meta["created_at"]), "started-at": repr(started)})
        except Exception:
            # Visible again at once; the attempt counts (the receive happened).
            try:
                self.sqs.change_message_visibility(QueueUrl=self.queue_url, ReceiptHandle=receipt, VisibilityTimeout=0)
            except Exception:  # noqa: BLE001 - then it reappears after its visibility timeout
                pass
            raise
        return Claim(id=job_id, attempt=attempt, body=body, content_type=meta["content_type"],
                     query_string=meta["query_string"], headers=[tuple(h) for h in meta["headers"]],
                     created_at=meta["created_at"], started_at=started, token=receipt)

    def _put_outcome(self, claim: Claim, status: str, body: bytes, content_type: str) -> bool:
        """Blocking: write the job's outcome unless one exists (True if this one was stored)."""
        from botocore.exceptions import ClientError

        meta = {"status": status, "created-at": repr(claim.created_at), "started-at": repr(claim.started_at),
                "finished-at": repr(time.time())}
        key = self._key(claim.id, "outcome")
        try:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type, Metadata=meta,
                               IfNoneMatch="*")
            return True
        except ClientError as err:
            code = _code(err)
            if code in _TAKEN:
                return False
            if code == "ConditionalRequestConflict" and self._object(key) is not None:  # a concurrent write won
                return False
            raise

    def _finish(self, claim: Claim, status: str, body: bytes, content_type: str, dead_letter: bool) -> bool:
        stored = self._put_outcome(claim, status, body, content_type)
        if dead_letter and stored:
            self.sqs.send_message(QueueUrl=self.dead_letter_queue_url, MessageBody=orjson.dumps(
                {"id": claim.id, "attempts": claim.attempt, "created_at": claim.created_at,
                 "error": orjson.loads(body)}).decode())
        self._delete_message(claim.token)
        return stored

    async def complete(self, claim: Claim, result: bytes, content_type: str) -> bool:
        return await self._run(self._finish, claim, COMPLETED, result, content_type, False)

    async def fail(self, claim: Claim, error: dict[str, Any], dead_letter: bool = False) -> bool:
        return await self._run(self._finish, claim, FAILED, orjson.dumps(error), "application/json", dead_letter)

    def _give_back(self, claim: Claim) -> None:
        self.sqs.send_message(
            QueueUrl=self.queue_url, MessageBody=orjson.dumps({"id": claim.id}).decode(),
            MessageAttributes={c.ASYNC_PRIOR_ATTEMPTS_ATTRIBUTE: {
                "DataType": "Number", "StringValue": str(claim.attempt - 1)}})
        self._delete_message(claim.token)
        self.s3.delete_object(Bucket=self.bucket, Key=self._key(claim.id, "attempt"))

    async def release(self, claim: Claim) -> None:
        await self._run(self._give_back, claim)

    def _state(self, job_id: str) -> JobState | None:
        cutoff = time.time() - self.retention
        outcome = self._object(self._key(job_id, "outcome"))
        if outcome is not None:
            meta = outcome.get("Metadata", {})
            if _created(meta) <= cutoff:
                return None
            body = outcome["Body"].read()
            status = meta.get("status", FAILED)
            common = dict(id=job_id, status=status, created_at=_created(meta),
                          started_at=float(meta.get("started-at") or 0) or None,
                          finished_at=float(meta.get("finished-at") or 0) or None)
            if status == COMPLETED:
                return JobState(**common, result=body, result_type=outcome.get("ContentType", "application/octet-stream"))
            return JobState(**common, error=orjson.loads(body))
        attempt = self._object(self._key(job_id, "attempt"))
        if attempt is not None:
            meta = attempt.get("Metadata", {})
            if _created(meta) <= cutoff:
                return None
            return JobState(id=job_id, status=IN_PROGRESS, created_at=_created(meta),
                            started_at=float(meta.get("started-at") or 0) or None)
        from botocore.exceptions import ClientError

        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=self._key(job_id, "request"))
        except ClientError as err:
            if _code(err) in _MISSING:
                return None
            raise
        created = _created(head.get("Metadata", {}))
        return JobState(id=job_id, status=IN_QUEUE, created_at=created) if created > cutoff else None

    async def get(self, job_id: str) -> JobState | None:
        return await self._run(self._state, job_id)

    async def depth(self) -> int:
        attrs = await self._run(self.sqs.get_queue_attributes, QueueUrl=self.queue_url,
                                AttributeNames=["ApproximateNumberOfMessages"])
        return int(attrs.get("Attributes", {}).get("ApproximateNumberOfMessages", 0))
