"""Start and drive moto (S3 and IAM) in server mode on 127.0.0.1 for the model tests and the benchmark.

The code under test reaches it exactly as it reaches S3 in production: boto3's standard chain
with `AWS_ENDPOINT_URL` pointing here and dummy credentials. Every request moto answers is a
JSON line in a log (moto_server.py), which is how the tests count GETs.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

from conftest import free_port, stop_process, wait_listening

HERE = Path(__file__).resolve().parent

#: Dummy credentials; IMDS and the developer's own AWS files are kept out of reach.
DUMMY = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
ISOLATED = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent/aws-config",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials"}
#: Variables that would let credentials or endpoints leak in from the environment running the tests.
AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
            "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")




class MotoS3:
    def __init__(self, workdir: Path, seek_ranges: bool = False):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(workdir) / f"moto-{self.port}.jsonl"
        self.log_path.write_text("")
        self._out = open(Path(workdir) / f"moto-{self.port}.out", "wb")
        args = [sys.executable, str(HERE / "moto_server.py"), "--port", str(self.port), "--log", str(self.log_path)]
        if seek_ranges:
            args.append("--seek-ranges")
        env = {k: v for k, v in os.environ.items() if k not in AWS_VARS}
        self.proc = subprocess.Popen(args, stdout=self._out, stderr=subprocess.STDOUT, env=env)
        wait_listening(self.proc, self.port, "moto", Path(self._out.name))

    def env(self, **extra: str) -> dict[str, str]:
        """Environment of a process that should reach this moto as its S3 (the caller's own AWS_* removed first:
        the `isolated_from_aws` fixture)."""
        return {**DUMMY, **ISOLATED, "AWS_ENDPOINT_URL": self.endpoint, **extra}

    def client(self, service: str = "s3", **credentials: str) -> Any:
        import boto3

        keys = {"aws_access_key_id": credentials.get("key", DUMMY["AWS_ACCESS_KEY_ID"]),
                "aws_secret_access_key": credentials.get("secret", DUMMY["AWS_SECRET_ACCESS_KEY"])}
        return boto3.session.Session().client(service, endpoint_url=self.endpoint, region_name="us-east-1", **keys)

    # -------------------------------------------------------------------- the request log
    def requests(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    def mark(self) -> int:
        return len(self.requests())

    def object_gets(self, bucket: str, key: str, since: int = 0) -> list[dict[str, Any]]:
        """GETs of the object's bytes (not listings, not HEADs) since a mark."""
        path = f"/{bucket}/{key}"
        return [r for r in self.requests()[since:] if r["method"] == "GET" and r["path"] == path]

    def stop(self) -> None:
        stop_process(self.proc)
        self._out.close()


class PatternFile:
    """A large, deterministic, file-like byte stream made on the fly: uploads of hundreds of MB in flat memory."""

    def __init__(self, size: int, seed: int = 0):
        self.size = size
        self.pos = 0
        self.block = hashlib.sha256(str(seed).encode()).digest() * (2**20 // 32)  # 1 MiB, seed-dependent

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.pos if n is None or n < 0 else min(n, self.size - self.pos)
        out = bytearray()
        while len(out) < n:
            offset = (self.pos + len(out)) % len(self.block)
            out += self.block[offset: offset + n - len(out)]
        self.pos += n
        return bytes(out)

    def chunks(self, size: int = 2**20) -> Iterator[bytes]:
        self.pos = 0
        while self.pos < self.size:
            yield self.read(size)

    def md5(self) -> str:
        digest = hashlib.md5()
        for chunk in self.chunks():
            digest.update(chunk)
        self.pos = 0
        return digest.hexdigest()


def upload_large(client: Any, bucket: str, key: str, size: int, seed: int = 0, part: int = 8 * 2**20) -> str:
    """Multipart upload of a generated object, streamed (never whole in memory); returns its MD5."""
    from boto3.s3.transfer import TransferConfig

    source = PatternFile(size, seed)
    md5 = source.md5()
    client.upload_fileobj(source, bucket, key, Config=TransferConfig(
        multipart_threshold=part, multipart_chunksize=part, max_concurrency=4))
    return md5
