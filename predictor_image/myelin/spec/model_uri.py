"""`predictor.model_uri`: where an API's model files live, parsed once; and the S3 scope an API may read.

Pure parsing, no I/O and no boto3: the spec validates the field with it, the runtime
(`myelin.model_files`) fetches what it names, and the infrastructure builds the API's IAM policy
from `s3_scope` without knowing S3 semantics itself.

A model URI is one of

- `s3://bucket/key`: one object (when an object with exactly that key exists), otherwise every
  object under `key/`;
- `s3://bucket/prefix/` (trailing slash) or `s3://bucket`: every object under the prefix;
- `s3://bucket/key?versionId=V`: that version of one object (versions pin single objects only);
- a local path: a directory, or a file (the model directory is then the file's folder); relative
  paths are relative to the API folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

# S3 bucket naming rules (general purpose buckets): 3-63 of lowercase letters, digits, '.', '-'.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class ModelUri:
    """A parsed `predictor.model_uri`. Exactly one of (`bucket`) or (`local_path`) is set."""

    raw: str
    bucket: str | None = None
    #: The key or prefix as written (no leading slash); '' names the whole bucket.
    key: str = ""
    version_id: str | None = None
    local_path: str | None = None

    @property
    def is_s3(self) -> bool:
        return self.bucket is not None

    @property
    def is_prefix(self) -> bool:
        """Written as a prefix (trailing slash or whole bucket): never read as one object."""
        return self.is_s3 and (self.key == "" or self.key.endswith("/"))

    @property
    def location(self) -> str:
        """The URI without its query (`s3://bucket/key`): how logs and errors name it, with the version apart."""
        if not self.is_s3:
            return self.raw
        return f"s3://{self.bucket}/{self.key}"

    def local_dir(self, api_folder: Path) -> Path:
        """The local path resolved against the API folder (meaningful only when not `is_s3`)."""
        path = Path(self.local_path or "").expanduser()
        return path if path.is_absolute() else (Path(api_folder) / path)


def parse_model_uri(uri: str) -> ModelUri:
    """Parse and check a model URI; ValueError says what is wrong with it."""
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError("must be an s3://bucket/prefix URI or a local path")
    uri = uri.strip()
    if not _SCHEME.match(uri):
        return ModelUri(raw=uri, local_path=uri)
    parts = urlsplit(uri)
    if parts.scheme != "s3":
        raise ValueError(f"unsupported scheme {parts.scheme!r} in {uri!r}: use s3://bucket/prefix or a local path")
    bucket = parts.netloc
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ValueError(f"invalid S3 bucket name {bucket!r} in {uri!r} (3-63 lowercase letters, digits, '.', '-')")
    if parts.fragment:
        raise ValueError(f"{uri!r} has a '#' fragment: S3 keys with '#' must be percent-encoded (%23)")
    key = parts.path.lstrip("/")
    version_id = None
    if parts.query:
        try:
            query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise ValueError(f"invalid query in {uri!r}: only ?versionId=<id> is allowed") from None
        unknown = set(query) - {"versionId"}
        if unknown:
            raise ValueError(f"unknown query parameter(s) {', '.join(sorted(unknown))} in {uri!r}: only ?versionId=<id>")
        values = query["versionId"]
        if len(values) != 1 or not values[0]:
            raise ValueError(f"{uri!r}: versionId needs exactly one non-empty value")
        version_id = values[0]
    model = ModelUri(raw=uri, bucket=bucket, key=key, version_id=version_id)
    if version_id is not None and model.is_prefix:
        raise ValueError(f"{uri!r}: ?versionId= pins one object; a prefix (ending in '/') has no single version")
    return model


@dataclass(frozen=True)
class S3Scope:
    """What an API's IAM policy must allow so it can read exactly its model and nothing else.

    - `object_arns`: `s3:GetObject` (and `s3:GetObjectVersion` when `versioned`) on these;
    - `bucket_arn` with `s3:ListBucket` limited by the condition `StringLike s3:prefix` to
      `list_prefixes` (listing is how a prefix is read, and how a missing object is told apart
      from a forbidden one).

    `s3://b/models/wine` may name one object or the prefix `models/wine/`, so its scope covers
    both `models/wine` and `models/wine/*`, never `models/wine2`.
    """

    bucket: str
    #: The key or prefix the API reads ('' = the whole bucket).
    prefix: str
    versioned: bool
    partition: str = "aws"

    @property
    def bucket_arn(self) -> str:
        return f"arn:{self.partition}:s3:::{self.bucket}"

    @property
    def object_arns(self) -> list[str]:
        base = self.bucket_arn + "/"
        if self.prefix == "" or self.prefix.endswith("/"):
            return [f"{base}{self.prefix}*"]
        return [f"{base}{self.prefix}", f"{base}{self.prefix}/*"]

    @property
    def list_prefixes(self) -> list[str]:
        if self.prefix == "" or self.prefix.endswith("/"):
            return [f"{self.prefix}*"]
        return [self.prefix, f"{self.prefix}/*"]

    @property
    def actions(self) -> list[str]:
        return ["s3:GetObject", "s3:GetObjectVersion"] if self.versioned else ["s3:GetObject"]

    def policy_document(self) -> dict:
        """A least-privilege IAM policy document (JSON-ready) for reading this model."""
        return {
            "Version": "2012-10-17",
            "Statement": [
                {"Sid": "ReadModelObjects", "Effect": "Allow", "Action": self.actions, "Resource": self.object_arns},
                {"Sid": "ListModelPrefix", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": [self.bucket_arn],
                 "Condition": {"StringLike": {"s3:prefix": self.list_prefixes}}},
            ],
        }


def s3_scope(uri: str | ModelUri, partition: str = "aws") -> S3Scope | None:
    """The (bucket, prefix) an API with this `model_uri` reads, for its IAM policy; None for a local path."""
    model = uri if isinstance(uri, ModelUri) else parse_model_uri(uri)
    if not model.is_s3:
        return None
    return S3Scope(bucket=model.bucket, prefix=model.key, versioned=model.version_id is not None, partition=partition)
