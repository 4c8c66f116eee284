"""Model files for `predictor.model_uri`: fetched into a content-addressed cache before `__init__`.

The predictor gets the directory as `model_dir` (loader.py decides that). This is the only module
that knows boto3, and it imports boto3 inside the functions that call S3: an API without an s3://
`model_uri` never pays for it.

What a fetch does (`ModelCache.fetch`):

1. Resolve: HeadObject for one object, ListObjectsV2 for a prefix. The objects' keys, sizes and
   ETags (and a pinned `versionId`) give the model's *version*: a sha256 that names the cache
   entry, and that `pulumi up` records in the pod template (`resolve_model_version`).
2. Cache hit (the entry exists and every file has the size its manifest records): nothing is downloaded. An
   entry whose files do not (a file truncated or missing: a full disk, a crash of the machine before the data
   reached it, a hand that edited the cache) is logged as a warning, moved out and downloaded again.
3. Miss: one process per machine downloads (an exclusive `flock` per version; the others wait and
   then hit), with boto3's transfer manager: parallel ranged GETs pinned to the listed ETag
   (`If-Match`) or the pinned version. Progress goes to the log as JSON lines (bytes, total, rate).
4. Verify every file: its size, and its content against the ETag (MD5 for single-part uploads,
   MD5 of the part MD5s for multipart ones; objects encrypted with SSE-KMS/SSE-C have no MD5
   ETag and are checked by size alone). Only then is the download renamed into place, at once:
   a failed or partial download is never used and never left behind. Before the rename every file,
   the manifest and every folder of the download are fsynced, and the cache's `entries/` folder after
   it: after a power cut an entry is there complete, or not at all.

Cache layout under `MYELIN_MODEL_CACHE`:

    entries/<version>/files/...       the model files (read-only): `model_dir`
    entries/<version>/manifest.json   URI, objects, bytes; its mtime is the entry's last use
    locks/<version>.download          flock: one download per version at a time
    locks/<version>.use               flock, shared while a process serves that model
    locks/evict                       flock: one eviction pass at a time
    tmp/                              downloads in progress, and entries being deleted

Eviction: before a download, least recently used entries are deleted until the cache plus the new
model fit in `MYELIN_MODEL_CACHE_MAX_BYTES`. An entry some process is serving (a shared lock on
its `.use` file, which the kernel releases when the process dies) is never evicted; if those
alone exceed the bound, the download still goes ahead and a warning is logged.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import json
import math
import os
import shutil
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .spec.model_uri import ModelUri, parse_model_uri

#: Ranged GETs: part size and how many run at once (per API, across all of its files).
CHUNK_BYTES = 16 * 2**20
MAX_CONCURRENCY = 16
#: At most one progress line per this many seconds (plus the first and the last).
PROGRESS_INTERVAL_S = 1.0
_READ_BLOCK = 2**20

#: `report(level, message, **fields)`: where fetch progress and outcomes go (the runtime's JSON log).
Report = Callable[..., None]


def _no_report(level: str, message: str, **fields: Any) -> None:
    pass


class ModelFetchError(Exception):
    """A model that could not be made available: names the URI and the reason."""

    def __init__(self, uri: str, reason: str, detail: str = ""):
        self.uri = uri
        self.reason = reason
        self.detail = detail
        super().__init__(f"cannot fetch model {uri}: {reason}" + (f" ({detail})" if detail else ""))


# ---------------------------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class S3Object:
    key: str
    #: Path under the model directory ('/'-separated).
    rel: str
    size: int
    #: As S3 returns it, with quotes.
    etag: str
    #: The pinned version (`?versionId=`), else None: unpinned reads are pinned by ETag instead.
    version_id: str | None = None

    @property
    def md5ish(self) -> str:
        return self.etag.strip('"').lower()


@dataclass(frozen=True)
class ModelListing:
    uri: ModelUri
    objects: tuple[S3Object, ...]

    @property
    def total_bytes(self) -> int:
        return sum(o.size for o in self.objects)

    @property
    def version(self) -> str:
        """sha256 over the URI and each object's key, size and ETag (and the pinned version)."""
        canonical = {
            "uri": self.uri.location,
            "versionId": self.uri.version_id,
            "objects": [[o.rel, o.key, o.size, o.md5ish] for o in sorted(self.objects, key=lambda o: o.rel)],
        }
        return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _safe_rel(uri: ModelUri, key: str, rel: str) -> str:
    """A key becomes a path under model_dir; keys that would escape it or clash with folders are refused."""
    parts = rel.split("/")
    if not rel or any(p in ("", ".", "..") for p in parts):
        raise ModelFetchError(uri.raw, "unusable object key", f"{key!r} cannot be a file path under the model directory")
    return rel


_DENIED = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
           "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem", "InvalidClientTokenId"}
_NOT_FOUND = {"NoSuchKey", "404", "NotFound", "NoSuchBucket"}
_BAD_VERSION = {"NoSuchVersion", "InvalidArgument", "400"}
_CHANGED = {"PreconditionFailed", "412"}


def _client_error_code(err: BaseException) -> str | None:
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", "")) or None
    return None


def _as_fetch_error(uri: ModelUri, err: BaseException, doing: str) -> ModelFetchError:
    """botocore/s3transfer exceptions -> the reasons a user can act on."""
    if isinstance(err, ModelFetchError):
        return err
    from botocore import exceptions as bx

    if isinstance(err, (bx.NoCredentialsError, bx.PartialCredentialsError, bx.CredentialRetrievalError)):
        return ModelFetchError(uri.raw, "no credentials", f"{doing}: {err}; boto3 looks in AWS_* environment variables, "
                               "~/.aws, and the pod's or instance's role")
    code = _client_error_code(err)
    if code is not None:
        message = str(getattr(err, "response", {}).get("Error", {}).get("Message", "")) or str(err)
        detail = f"{doing}: {code}: {message}"
        if code in _DENIED:
            return ModelFetchError(uri.raw, "access denied", detail)
        if uri.version_id is not None and code in _BAD_VERSION | _NOT_FOUND:
            return ModelFetchError(uri.raw, "version not found", detail)
        if code in _NOT_FOUND:
            return ModelFetchError(uri.raw, "not found", detail)
        if code in _CHANGED:
            return ModelFetchError(uri.raw, "changed during download", f"{detail}; restart to fetch the new version")
        return ModelFetchError(uri.raw, "S3 error", detail)
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return ModelFetchError(uri.raw, "no space left for the model", f"{doing}: {err}; the cache needs the model's "
                               "size free (compute.model_disk in the cloud, MYELIN_MODEL_CACHE_MAX_BYTES)")
    if isinstance(err, (bx.EndpointConnectionError, bx.ConnectionError, bx.HTTPClientError)):
        return ModelFetchError(uri.raw, "cannot reach S3", f"{doing}: {err}")
    cause = err.__cause__ or err.__context__
    if cause is not None and cause is not err and not isinstance(err, (bx.BotoCoreError,)):
        nested = _as_fetch_error(uri, cause, doing)
        if nested.reason != "S3 error":
            return nested
    return ModelFetchError(uri.raw, "S3 error", f"{doing}: {type(err).__name__}: {err}")


def s3_client() -> Any:
    """An S3 client from the standard boto3 chain (env, ~/.aws, pod or instance role; AWS_ENDPOINT_URL honoured)."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=MAX_CONCURRENCY + 4,
                    connect_timeout=10, read_timeout=60)
    return boto3.session.Session().client("s3", config=config)


def list_model(uri: ModelUri, client: Any) -> ModelListing:
    """The objects a model URI names. Raises ModelFetchError (not found, access denied, no credentials, ...)."""
    from botocore.exceptions import BotoCoreError, ClientError

    first_error: BaseException | None = None
    if not uri.is_prefix:
        args: dict[str, Any] = {"Bucket": uri.bucket, "Key": uri.key}
        if uri.version_id is not None:
            args["VersionId"] = uri.version_id
        try:
            head = client.head_object(**args)
        except (ClientError, BotoCoreError) as err:
            fetch_error = _as_fetch_error(uri, err, f"HeadObject {uri.key}")
            # Not an object: perhaps a prefix (S3 answers 403 for a missing key without ListBucket).
            if uri.version_id is not None or fetch_error.reason not in ("not found", "access denied"):
                raise fetch_error from None
            first_error = fetch_error
        else:
            rel = _safe_rel(uri, uri.key, uri.key.rsplit("/", 1)[-1])
            return ModelListing(uri, (S3Object(uri.key, rel, int(head["ContentLength"]), head["ETag"],
                                               uri.version_id),))
        prefix = uri.key + "/"
    else:
        prefix = uri.key
    objects: list[S3Object] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=uri.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                if key.endswith("/") and int(item["Size"]) == 0:
                    continue  # a "folder" marker made by consoles
                objects.append(S3Object(key, _safe_rel(uri, key, key[len(prefix):]), int(item["Size"]), item["ETag"]))
    except (ClientError, BotoCoreError) as err:
        fetch_error = _as_fetch_error(uri, err, f"ListObjectsV2 {prefix or '(whole bucket)'}")
        if first_error is not None and fetch_error.reason == "access denied":
            raise first_error from None
        raise fetch_error from None
    if not objects:
        if first_error is not None and first_error.reason == "access denied":
            raise first_error
        what = f"no object {uri.key!r} and no objects under {prefix!r}" if first_error else f"no objects under {prefix!r}"
        raise ModelFetchError(uri.raw, "not found", f"{what} in bucket {uri.bucket}")
    rels = {o.rel for o in objects}
    for o in objects:  # 'a' and 'a/b' cannot both be files
        parent = o.rel.rsplit("/", 1)[0] if "/" in o.rel else None
        while parent:
            if parent in rels:
                raise ModelFetchError(uri.raw, "unusable object key", f"{parent!r} is both an object and a folder")
            parent = parent.rsplit("/", 1)[0] if "/" in parent else None
    return ModelListing(uri, tuple(objects))


def resolve_model_version(uri: str, client: Any = None) -> str | None:
    """A stable fingerprint of the model now at `uri`, for `pulumi up` to record in the pod template.

    It changes exactly when the model's files change (a key, a size, an ETag, or the pinned
    version), and it is the name of the runtime's cache entry for those files. None for a local
    path. Raises ModelFetchError naming the URI and the reason (no credentials, access denied,
    not found). Needs `s3:ListBucket` on the prefix and `s3:GetObject` on the objects, as the
    API itself does (`myelin.spec.s3_scope`).
    """
    model = parse_model_uri(uri)
    if not model.is_s3:
        return None
    return list_model(model, client if client is not None else s3_client()).version


# ---------------------------------------------------------------------------------------------- verification


def _md5_of_range(path: Path, start: int, length: int) -> bytes:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        f.seek(start)
        left = length
        while left > 0:
            block = f.read(min(_READ_BLOCK, left))
            if not block:
                break
            digest.update(block)
            left -= len(block)
    return digest.digest()


def _multipart_etag(path: Path, size: int, part_size: int, parts: int) -> str:
    ranges = [(i * part_size, min(part_size, size - i * part_size)) for i in range(parts)]
    with ThreadPoolExecutor(max_workers=min(len(ranges), os.cpu_count() or 2)) as pool:  # hashlib drops the GIL
        digests = list(pool.map(lambda r: _md5_of_range(path, *r), ranges))
    return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{parts}"


def _part_size_candidates(size: int, parts: int, hint: int | None) -> list[int]:
    """Part sizes that give `parts` parts for `size` bytes: the server's hint first, then whole MiB sizes."""
    if parts == 1:
        return [size]
    low, high = math.ceil(size / parts), (size - 1) // (parts - 1)
    found: list[int] = []
    if hint and low <= hint <= high:
        found.append(hint)
    mib = max(1, math.ceil(low / 2**20))
    while mib * 2**20 <= high and len(found) < 4:
        if mib * 2**20 not in found:
            found.append(mib * 2**20)
        mib += 1
    return found


def verify_file(path: Path, obj: S3Object, encrypted: bool, part_hint: int | None) -> str:
    """Check a downloaded file against its object; returns what was checked, raises ValueError on a mismatch."""
    actual = path.stat().st_size
    if actual != obj.size:
        raise ValueError(f"{obj.key}: {actual} bytes on disk, {obj.size} in S3")
    etag = obj.md5ish
    if encrypted:
        return "size"  # SSE-KMS / SSE-C ETags are not MD5s of the content
    if "-" not in etag:
        if len(etag) != 32:
            return "size"
        got = _md5_of_range(path, 0, actual).hex()
        if got != etag:
            raise ValueError(f"{obj.key}: MD5 {got} does not match ETag {etag}")
        return "md5"
    head, _, count = etag.partition("-")
    if len(head) != 32 or not count.isdigit():
        return "size"
    parts = int(count)
    for part_size in _part_size_candidates(obj.size, parts, part_hint):
        if _multipart_etag(path, obj.size, part_size, parts) == etag:
            return "md5-parts"
    raise ValueError(f"{obj.key}: content does not match multipart ETag {etag}")


# ---------------------------------------------------------------------------------------------- locks


def _lock(path: Path, exclusive: bool, blocking: bool = True) -> int | None:
    """flock a file (created if missing); the fd, or None when non-blocking and held elsewhere."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    flags = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if blocking else fcntl.LOCK_NB)
    try:
        fcntl.flock(fd, flags)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the last fd of an open file description releases its flock


class Lease:
    """A shared lock on an entry's `.use` file: the entry is not evicted while it is held."""

    def __init__(self, fd: int | None):
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        _unlock(fd)


# ---------------------------------------------------------------------------------------------- progress


class _Progress:
    """Counts bytes from the transfer threads; reports at most once per interval, and at the end."""

    def __init__(self, report: Report, total: int, fields: dict[str, Any]):
        self.report = report
        self.total = total
        self.fields = fields
        self.done = 0
        self.start = time.monotonic()
        self._last = 0.0
        self._lock = threading.Lock()

    def add(self, amount: int) -> None:
        with self._lock:
            self.done += amount
            now = time.monotonic()
            if now - self._last < PROGRESS_INTERVAL_S:
                return
            self._last = now
            done = self.done
        self._emit(done, now)

    def _emit(self, done: int, now: float) -> None:
        elapsed = max(now - self.start, 1e-6)
        self.report("info", "model download progress", **self.fields, bytes=done, total=self.total,
                    rate=round(done / elapsed), elapsed_s=round(elapsed, 3))

    def finish(self) -> float:
        now = time.monotonic()
        self._emit(self.done, now)
        return now - self.start


# ---------------------------------------------------------------------------------------------- the cache


@dataclass
class FetchedModel:
    """A model ready on local disk. Keep it (its lease) for as long as the model is served."""

    uri: str
    path: Path
    version: str | None
    bytes: int
    downloaded: bool
    lease: Lease | None = None

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()

    def describe(self) -> dict[str, Any]:
        return {"uri": self.uri, "dir": str(self.path), "version": self.version, "bytes": self.bytes,
                "downloaded": self.downloaded}


_tmp_names = itertools.count()


class ModelCache:
    def __init__(self, root: str | Path, max_bytes: int):
        self.root = Path(root).expanduser()
        self.max_bytes = max_bytes
        self.entries = self.root / "entries"
        self.locks = self.root / "locks"
        self.tmp = self.root / "tmp"

    @classmethod
    def from_settings(cls, settings: Any) -> "ModelCache":
        return cls(settings.model_cache, settings.model_cache_max_bytes)

    # -------------------------------------------------------------------------- fetch
    def fetch(self, model_uri: str, api_folder: Path, report: Report = _no_report, api: str = "",
              client: Any = None) -> FetchedModel:
        """Make the model available locally: a local path as it is, an S3 model through the cache."""
        uri = parse_model_uri(model_uri)
        if not uri.is_s3:
            return self._local(uri, Path(api_folder))
        fields = {"api": api, "uri": uri.raw} if api else {"uri": uri.raw}
        started = time.monotonic()
        try:
            client = client if client is not None else s3_client()
            listing = list_model(uri, client)
        except ModelFetchError:
            raise
        except Exception as err:  # noqa: BLE001 - e.g. a bad AWS config file: still name the URI
            raise _as_fetch_error(uri, err, "creating the S3 client") from None
        version = listing.version
        try:
            for path in (self.entries, self.locks, self.tmp):
                path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ModelFetchError(uri.raw, "model cache not writable", f"{err}; set MYELIN_MODEL_CACHE") from None
        lease = Lease(_lock(self.locks / f"{version}.use", exclusive=False))
        try:
            downloaded = self._ensure(client, listing, report, fields)
        except BaseException:
            lease.release()
            raise
        entry = self.entries / version
        os.utime(entry / "manifest.json")  # last use, for LRU eviction
        report("info", "model ready", **fields, version=version, dir=str(entry / "files"), bytes=listing.total_bytes,
               objects=len(listing.objects), downloaded=downloaded, seconds=round(time.monotonic() - started, 3))
        return FetchedModel(uri.raw, entry / "files", version, listing.total_bytes, downloaded, lease)

    def _local(self, uri: ModelUri, api_folder: Path) -> FetchedModel:
        path = uri.local_dir(api_folder)
        if path.is_file():
            path = path.parent
        elif not path.is_dir():
            raise ModelFetchError(uri.raw, "not found", f"no file or folder at {path}")
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return FetchedModel(uri.raw, path.resolve(), None, size, downloaded=False)

    def _ensure(self, client: Any, listing: ModelListing, report: Report, fields: dict[str, Any]) -> bool:
        """The entry exists, whole, when this returns: True if this process downloaded it."""
        version = listing.version
        entry = self.entries / version
        if (entry / "manifest.json").is_file() and _damage(entry) is None:
            return False
        lock_path = self.locks / f"{version}.download"
        fd = _lock(lock_path, exclusive=True, blocking=False)
        if fd is None:
            report("info", "model download: waiting for another process downloading it", **fields, version=version)
            fd = _lock(lock_path, exclusive=True)
        try:
            if os.path.lexists(entry):
                damage = _damage(entry)
                if damage is None:
                    return False  # the other process finished it
                report("warning", "model cache: the cached model does not match its manifest; downloading it again",
                       **fields, version=version, damage=damage)
                self._discard(version)
            self._evict(listing.total_bytes, report, fields, downloading=version)
            self._download(client, listing, report, fields)
            return True
        finally:
            _unlock(fd)

    def _download(self, client: Any, listing: ModelListing, report: Report, fields: dict[str, Any]) -> None:
        uri, version = listing.uri, listing.version
        work = self.tmp / f"{version}.{os.getpid()}.{next(_tmp_names)}"
        files = work / "files"
        files.mkdir(parents=True)
        try:
            report("info", "model download started", **fields, version=version, objects=len(listing.objects),
                   total=listing.total_bytes)
            progress = _Progress(report, listing.total_bytes, fields)
            checks = self._transfer(client, listing, files, progress)
            seconds = progress.finish()
            verified = {}
            for obj in listing.objects:
                encrypted, part_hint = checks[obj.key]
                try:
                    verified[obj.rel] = verify_file(files / obj.rel, obj, encrypted, part_hint)
                except ValueError as err:
                    raise ModelFetchError(uri.raw, "verification failed", str(err)) from None
            manifest = {"uri": uri.raw, "version": version, "bytes": listing.total_bytes,
                        "downloaded_at": time.time(), "download_seconds": round(seconds, 3),
                        "objects": [{"key": o.key, "path": o.rel, "size": o.size, "etag": o.md5ish,
                                     "version_id": o.version_id, "verified": verified[o.rel]} for o in listing.objects]}
            (work / "manifest.json").write_text(json.dumps(manifest, indent=1))
            _read_only(files)
            _fsync_tree(work)  # the data is on disk before the name that says it is complete
            os.rename(work, self.entries / version)  # atomic: the entry appears complete or not at all
            _fsync_dir(self.entries)
            _fsync_dir(self.tmp)
            report("info", "model downloaded", **fields, version=version, bytes=listing.total_bytes,
                   total=listing.total_bytes, seconds=round(seconds, 3),
                   rate=round(listing.total_bytes / max(seconds, 1e-6)), verified=sorted(set(verified.values())))
        finally:
            if work.exists():
                _remove_tree(work)

    def _transfer(self, client: Any, listing: ModelListing, files: Path,
                  progress: _Progress) -> dict[str, tuple[bool, int | None]]:
        """Parallel ranged GETs of every object; returns per key (encrypted, first part's size)."""
        from boto3.s3.transfer import TransferConfig, create_transfer_manager
        from botocore.exceptions import BotoCoreError, ClientError
        from s3transfer.subscribers import BaseSubscriber

        uri = listing.uri

        class Known(BaseSubscriber):
            """Size and ETag are known from the listing: no HeadObject per file, and every range If-Match'ed."""

            def __init__(self, obj: S3Object):
                self.obj = obj

            def on_queued(self, future: Any, **kwargs: Any) -> None:
                future.meta.provide_transfer_size(self.obj.size)
                if self.obj.version_id is None:
                    future.meta.provide_object_etag(self.obj.etag)

            def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
                progress.add(bytes_transferred)

        checks: dict[str, tuple[bool, int | None]] = {}
        doing = "HeadObject"
        try:
            for obj in listing.objects:
                # Part 1's size and the encryption tell how the ETag can be checked (one HEAD per file).
                args: dict[str, Any] = {"Bucket": uri.bucket, "Key": obj.key, "PartNumber": 1}
                if obj.version_id is not None:
                    args["VersionId"] = obj.version_id
                doing = f"HeadObject {obj.key}"
                head = client.head_object(**args)
                encrypted = str(head.get("ServerSideEncryption", "")).startswith("aws:kms") \
                    or "SSECustomerAlgorithm" in head
                part = int(head.get("ContentLength", 0)) or None
                checks[obj.key] = (encrypted, part if part and part < obj.size else None)
            config = TransferConfig(multipart_threshold=CHUNK_BYTES, multipart_chunksize=CHUNK_BYTES,
                                    max_concurrency=MAX_CONCURRENCY, use_threads=True,
                                    preferred_transfer_client="classic")
            doing = "GetObject"
            with create_transfer_manager(client, config) as manager:
                futures = []
                for obj in listing.objects:
                    dest = files / obj.rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    extra = {"VersionId": obj.version_id} if obj.version_id is not None else {}
                    futures.append((obj, manager.download(uri.bucket, obj.key, str(dest), extra_args=extra,
                                                          subscribers=[Known(obj)])))
                for obj, future in futures:
                    doing = f"GetObject {obj.key}"
                    future.result()
        except (ClientError, BotoCoreError) as err:
            raise _as_fetch_error(uri, err, doing) from None
        except ModelFetchError:
            raise
        except Exception as err:  # noqa: BLE001 - s3transfer wraps some errors (e.g. RetriesExceededError)
            raise _as_fetch_error(uri, err, doing) from None
        return checks

    def _discard(self, version: str) -> None:
        """Move an entry out of `entries/` at once (a process looking sees it gone), then delete it."""
        trash = self.tmp / f"evicted.{version}.{os.getpid()}.{next(_tmp_names)}"
        try:
            os.rename(self.entries / version, trash)
        except FileNotFoundError:
            return
        _remove_tree(trash)

    # -------------------------------------------------------------------------- eviction
    def _entries(self) -> list[tuple[float, int, str]]:
        """(last use, bytes, version) of every complete entry."""
        found = []
        for entry in self.entries.iterdir() if self.entries.is_dir() else []:
            manifest = entry / "manifest.json"
            try:
                last_use = manifest.stat().st_mtime
                size = int(json.loads(manifest.read_text())["bytes"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            found.append((last_use, size, entry.name))
        return sorted(found)

    def _evict(self, need: int, report: Report, fields: dict[str, Any], downloading: str) -> None:
        """Delete least recently used entries not in use until `need` more bytes fit; clear stale temp dirs."""
        fd = _lock(self.locks / "evict", exclusive=True)
        try:
            self._clear_stale_tmp(downloading)
            entries = self._entries()
            total = sum(size for _, size, _ in entries)
            for _, size, version in entries:
                if total + need <= self.max_bytes:
                    break
                use = _lock(self.locks / f"{version}.use", exclusive=True, blocking=False)
                if use is None:
                    continue  # some process serves it
                try:
                    trash = self.tmp / f"evicted.{version}.{os.getpid()}.{next(_tmp_names)}"
                    os.rename(self.entries / version, trash)
                finally:
                    _unlock(use)
                _remove_tree(trash)
                total -= size
                report("info", "model cache: evicted least recently used model", **fields, evicted=version,
                       bytes=size, cache_bytes=total, max_bytes=self.max_bytes)
            if total + need > self.max_bytes:
                report("warning", "model cache over its bound: the models in use (plus this one) do not fit",
                       **fields, cache_bytes=total, need=need, max_bytes=self.max_bytes)
        finally:
            _unlock(fd)

    def _clear_stale_tmp(self, downloading: str) -> None:
        """Left by a process that died mid-download or mid-eviction (called under the evict lock, and the
        download lock of `downloading`, so that version's leftovers are stale too)."""
        for path in self.tmp.iterdir() if self.tmp.is_dir() else []:
            version = path.name.split(".", 1)[0]
            if path.name.startswith("evicted.") or version == downloading:
                _remove_tree(path)
                continue
            fd = _lock(self.locks / f"{version}.download", exclusive=True, blocking=False)
            if fd is None:
                continue  # its download is running
            try:
                _remove_tree(path)
            finally:
                _unlock(fd)


def _damage(entry: Path) -> str | None:
    """What is wrong with a cache entry (a file missing or not the size its manifest records), or None when whole."""
    try:
        manifest = json.loads((entry / "manifest.json").read_text())
        objects = [(str(o["path"]), int(o["size"])) for o in manifest["objects"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"manifest.json unreadable: {type(err).__name__}: {err}"
    for rel, size in objects:
        try:
            info = os.lstat(entry / "files" / rel)
        except OSError:
            return f"{rel}: missing ({size} bytes in the manifest)"
        if not stat.S_ISREG(info.st_mode):
            return f"{rel}: not a regular file"
        if info.st_size != size:
            return f"{rel}: {info.st_size} bytes on disk, {size} in the manifest"
    return None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file under `root`, then every folder, deepest first (a folder's entries after its files)."""
    for folder, _, names in os.walk(root, topdown=False):
        for name in names:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def _read_only(folder: Path) -> None:
    """Served files are not to be written: a predictor that tries gets an error, not a corrupted cache."""
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


def _remove_tree(path: Path) -> None:
    # Files are read-only but their folders are not, so they can be removed.
    shutil.rmtree(path, ignore_errors=True)
