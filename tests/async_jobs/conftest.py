"""AsyncAPI test helpers: API folders, the two job stores (real SQLite files; SQS + S3 on moto in server
mode on 127.0.0.1), servers that can be killed and restarted on the same store, and polling."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from conftest import ServerProcess, free_port, stop_process, wait_listening

PREDICTOR = Path(__file__).resolve().parent / "apis" / "jobs" / "predictor.py"
#: moto accepts any credentials; these keep boto3 from looking for real ones.
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "AWS_DEFAULT_REGION": "us-east-1"}
TERMINAL = ("completed", "failed")


def make_api(root: Path, name: str = "jobs", yaml: str = "") -> Path:
    """An AsyncAPI folder using the test predictor; `yaml` adds sections to api.yaml."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "api.yaml").write_text(f"name: {name}\nkind: AsyncAPI\n{yaml}")
    shutil.copy(PREDICTOR, folder / "predictor.py")
    return folder


class MotoServer:
    """`python -m moto.server` on a free loopback port, stopped by pid."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(workdir / "moto.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **AWS_ENV})
        wait_listening(self.proc, self.port, "moto server", workdir / "moto.log")

    def client(self, service: str):
        import boto3

        return boto3.client(service, endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


class Backend:
    """One job store for one test: the server environment that selects it, and a look inside it."""

    def __init__(self, kind: str, tmp_path: Path, moto: MotoServer | None = None, api: str = "jobs"):
        self.kind = kind
        self.api = api
        self.state_dir = tmp_path / "state"
        self.moto = moto
        if kind == "sqs":
            suffix = uuid.uuid4().hex[:12]
            sqs = moto.client("sqs")
            self.queue_url = sqs.create_queue(QueueName=f"jobs-{suffix}")["QueueUrl"]
            self.dlq_url = sqs.create_queue(QueueName=f"jobs-dlq-{suffix}")["QueueUrl"]
            self.bucket = f"jobs-{suffix}"
            moto.client("s3").create_bucket(Bucket=self.bucket)
            self.prefix = f"apis/{api}/"

    @property
    def env(self) -> dict[str, str]:
        if self.kind == "sqlite":
            return {"MYELIN_STATE_DIR": str(self.state_dir)}
        return {**AWS_ENV, "AWS_ENDPOINT_URL": self.moto.url, "MYELIN_ASYNC_STORE": "sqs",
                "MYELIN_ASYNC_QUEUE_URL": self.queue_url, "MYELIN_ASYNC_DEAD_LETTER_QUEUE_URL": self.dlq_url,
                "MYELIN_ASYNC_STORAGE_URI": f"s3://{self.bucket}/{self.prefix}"}

    def dead_letters(self) -> list[str]:
        """Ids in the dead-letter store."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.state_dir / f"{self.api}.sqlite3") as conn:
                return [r[0] for r in conn.execute("SELECT id FROM dead_letters")]
        import json

        sqs = self.moto.client("sqs")
        ids = []
        while True:
            got = sqs.receive_message(QueueUrl=self.dlq_url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
            if not got:
                return ids
            ids += [json.loads(m["Body"])["id"] for m in got]

    def stored_outcomes(self) -> dict[str, str]:
        """id -> completed/failed as the store holds it (SQLite rows; S3 outcome objects)."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.state_dir / f"{self.api}.sqlite3") as conn:
                return dict(conn.execute("SELECT id, status FROM jobs WHERE status IN ('completed', 'failed')"))
        s3 = self.moto.client("s3")
        out = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + "jobs/"):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith("/outcome"):
                    job_id = obj["Key"].split("/")[-2]
                    out[job_id] = s3.head_object(Bucket=self.bucket, Key=obj["Key"])["Metadata"]["status"]
        return out


@pytest.fixture(params=["sqlite", "sqs"])
def backend(request, tmp_path):
    moto = request.getfixturevalue("moto") if request.param == "sqs" else None
    return Backend(request.param, tmp_path, moto)


class Servers:
    """`myelin serve` processes on one store; stopped (SIGTERM, then SIGKILL) by pid at teardown."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.all: list[ServerProcess] = []

    def start(self, folder: Path, env: dict[str, str], *extra: str, wait: bool = True) -> ServerProcess:
        server = ServerProcess(["serve", str(folder), *extra], self.tmp_path, env)
        self.all.append(server)
        if wait:
            server.wait_ready(timeout=60)
        return server

    def stop_all(self) -> None:
        for server in self.all:
            server.stop()


@pytest.fixture
def servers(tmp_path):
    s = Servers(tmp_path)
    yield s
    s.stop_all()


def submit(client: httpx.Client, url: str, **kwargs) -> str:
    r = client.post(url, **kwargs)
    assert r.status_code == 202, (r.status_code, r.text)
    job_id = r.json()["id"]
    assert r.headers["location"] == f"{httpx.URL(url).path}/{job_id}"
    return job_id


def wait_for(client: httpx.Client, url: str, ids: list[str], timeout: float = 90.0,
             statuses: tuple[str, ...] = TERMINAL) -> dict[str, dict]:
    """Poll GET <url>/<id> until every job has one of `statuses`; id -> its status document."""
    docs: dict[str, dict] = {}
    pending = list(dict.fromkeys(ids))
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        still = []
        for i, job_id in enumerate(pending):
            if len(still) >= 3:  # jobs run roughly in order: the rest are likely waiting too, look later
                still.extend(pending[i:])
                break
            try:
                r = client.get(f"{url}/{job_id}")
            except httpx.TransportError:  # a server being restarted
                still.append(job_id)
                continue
            if r.status_code == 200 and r.json()["status"] in statuses:
                docs[job_id] = r.json()
            else:
                still.append(job_id)
        pending = still
        if pending:
            time.sleep(0.1)
    assert not pending, f"{len(pending)} job(s) not {'/'.join(statuses)} within {timeout}s, e.g. {pending[:3]}"
    return docs


def job_lines(*servers: ServerProcess) -> list[dict]:
    """The per-attempt job log lines of these server runs."""
    return [line for s in servers for line in s.log_lines() if "job_status" in line]


def job_lines_until(done, *servers: ServerProcess, timeout: float = 15.0) -> list[dict]:
    """Job log lines once `done(lines)` holds: a line is written just after its outcome is stored, so a
    client that saw the outcome may read the log a moment before the line is there."""
    deadline = time.monotonic() + timeout
    while True:
        lines = job_lines(*servers)
        if done(lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)
