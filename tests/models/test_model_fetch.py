"""`predictor.model_uri` from S3, end to end: a real `myelin serve` fetching from moto (server mode, loopback).

The server reaches moto exactly as it reaches S3 in the cloud: boto3's standard credential chain
(dummy keys here) and `AWS_ENDPOINT_URL`. GETs are counted from moto's own request log.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import time
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, ServerProcess
from .moto_s3 import upload_large

API = Path(__file__).resolve().parent / "apis" / "model-files"
BUCKET = "models"
MiB = 2**20


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture(scope="module")
def s3(moto):
    client = moto.client()
    client.create_bucket(Bucket=BUCKET)
    return client


def start(tmp_path, moto, uri: str, cache: Path, wait: bool = True, ready_status: int = 200, **env: str) -> ServerProcess:
    spec = {"name": "model-files", "predictor": {"model_uri": uri}}
    server = ServerProcess(["serve", str(API)], tmp_path,
                           moto.env(MYELIN_API_SPEC=json.dumps(spec), MYELIN_MODEL_CACHE=str(cache), **env))
    if wait:
        try:
            server.wait_ready(timeout=120, status=ready_status)
        except BaseException:
            server.stop()
            raise
    return server


def files_served(server: ServerProcess) -> dict:
    return httpx.post(server.base + "/model-files", json={}, timeout=10).json()


def events(server: ServerProcess, message: str) -> list[dict]:
    return [line for line in server.log_lines() if line.get("message") == message]


def cache_files(cache: Path) -> list[str]:
    """Every file under the cache except the (empty) lock files."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file() and p.parent.name != "locks")


def test_single_object_reaches_model_dir_with_progress_lines(tmp_path, moto, s3):
    data = os.urandom(3 * MiB + 17)
    s3.put_object(Bucket=BUCKET, Key="single/model.bin", Body=data)
    cache = tmp_path / "cache"
    server = start(tmp_path, moto, "s3://models/single/model.bin", cache)
    try:
        served = files_served(server)
        assert served["files"] == {"model.bin": {"size": len(data), "md5": md5(data)}}
        assert Path(served["model_dir"]).is_relative_to(cache / "entries")
        progress = events(server, "model download progress")
        assert progress, server.stdout()
        for line in progress:
            assert line["api"] == "model-files" and line["uri"] == "s3://models/single/model.bin"
            assert line["total"] == len(data) and 0 <= line["bytes"] <= len(data) and line["rate"] >= 0
        assert [l["bytes"] for l in progress] == sorted(l["bytes"] for l in progress)
        assert progress[-1]["bytes"] == len(data)
        (done,) = events(server, "model downloaded")
        assert done["verified"] == ["md5"] and done["bytes"] == len(data)
        info = httpx.get(server.base + "/info").json()["apis"][0]["model"]
        assert info["uri"] == "s3://models/single/model.bin" and info["downloaded"] is True
        # The served files are read-only: a predictor cannot corrupt the cache.
        assert not os.access(Path(served["model_dir"]) / "model.bin", os.W_OK) or os.geteuid() == 0
        assert oct((Path(served["model_dir"]) / "model.bin").stat().st_mode & 0o777) == "0o444"
    finally:
        server.stop()


def test_prefix_with_folders_and_a_multipart_object(tmp_path, moto, s3):
    config = b'{"layers": 2}'
    tokenizer = os.urandom(1000)
    s3.put_object(Bucket=BUCKET, Key="prefix/config.json", Body=config)
    s3.put_object(Bucket=BUCKET, Key="prefix/tokenizer/vocab.bin", Body=tokenizer)
    s3.put_object(Bucket=BUCKET, Key="prefix/empty/", Body=b"")  # a console "folder": not a file
    weights_md5 = upload_large(s3, BUCKET, "prefix/weights.bin", 20 * MiB + 5, seed=1)
    s3.put_object(Bucket=BUCKET, Key="prefixed-sibling/not-mine.bin", Body=b"x")
    cache = tmp_path / "cache"
    server = start(tmp_path, moto, "s3://models/prefix", cache)  # no trailing slash: not an object, so a prefix
    try:
        assert files_served(server)["files"] == {
            "config.json": {"size": len(config), "md5": md5(config)},
            "tokenizer/vocab.bin": {"size": len(tokenizer), "md5": md5(tokenizer)},
            "weights.bin": {"size": 20 * MiB + 5, "md5": weights_md5},
        }
        (done,) = events(server, "model downloaded")
        assert done["verified"] == ["md5", "md5-parts"]  # the multipart ETag checked part by part
        gets = moto.object_gets(BUCKET, "prefix/weights.bin")
        assert len(gets) == 2 and all(g["range"] for g in gets)  # parallel ranged GETs of 16 MiB
        assert not moto.object_gets(BUCKET, "prefixed-sibling/not-mine.bin")
    finally:
        server.stop()


def test_cache_hit_on_restart_then_a_changed_object_is_downloaded_again(tmp_path, moto, s3):
    s3.put_object(Bucket=BUCKET, Key="restart/model.bin", Body=b"version one" * 1000)
    cache = tmp_path / "cache"
    first = start(tmp_path, moto, "s3://models/restart/model.bin", cache)
    first.stop()
    assert len(moto.object_gets(BUCKET, "restart/model.bin")) == 1

    mark = moto.mark()
    again = start(tmp_path, moto, "s3://models/restart/model.bin", cache)
    try:
        assert files_served(again)["files"]["model.bin"]["md5"] == md5(b"version one" * 1000)
        assert moto.object_gets(BUCKET, "restart/model.bin", since=mark) == []  # no second GET
        (ready,) = events(again, "model ready")
        assert ready["downloaded"] is False
        assert events(again, "model download progress") == []
    finally:
        again.stop()

    s3.put_object(Bucket=BUCKET, Key="restart/model.bin", Body=b"version two" * 1000)
    mark = moto.mark()
    changed = start(tmp_path, moto, "s3://models/restart/model.bin", cache)
    try:
        assert files_served(changed)["files"]["model.bin"]["md5"] == md5(b"version two" * 1000)
        assert len(moto.object_gets(BUCKET, "restart/model.bin", since=mark)) == 1
        (ready,) = events(changed, "model ready")
        assert ready["downloaded"] is True
    finally:
        changed.stop()
    assert len(list((cache / "entries").iterdir())) == 2  # both versions cached, the bound not reached


def test_version_pin(tmp_path, moto, s3):
    s3.create_bucket(Bucket="versioned")
    s3.put_bucket_versioning(Bucket="versioned", VersioningConfiguration={"Status": "Enabled"})
    v1 = s3.put_object(Bucket="versioned", Key="m/model.bin", Body=b"first")["VersionId"]
    s3.put_object(Bucket="versioned", Key="m/model.bin", Body=b"second")
    cache = tmp_path / "cache"
    pinned = start(tmp_path, moto, f"s3://versioned/m/model.bin?versionId={v1}", cache)
    try:
        assert files_served(pinned)["files"]["model.bin"]["md5"] == md5(b"first")
        gets = moto.object_gets("versioned", "m/model.bin")
        assert gets and all(f"versionId={v1}" in g["query"] for g in gets)
    finally:
        pinned.stop()
    latest = start(tmp_path, moto, "s3://versioned/m/model.bin", cache)
    try:
        assert files_served(latest)["files"]["model.bin"]["md5"] == md5(b"second")
    finally:
        latest.stop()
    bad = start(tmp_path, moto, "s3://versioned/m/model.bin?versionId=no-such-version", cache, wait=False)
    try:
        message = failed_message(bad)
        assert "s3://versioned/m/model.bin?versionId=no-such-version" in message and "version not found" in message
    finally:
        bad.stop()


def failed_message(server: ServerProcess) -> str:
    """`myelin serve` of an API whose model cannot be fetched exits 1 (Kubernetes shows a crash loop with the
    reason) and names the URI and the reason on stderr; the message."""
    line = server.load_failure()
    assert "api.yaml predictor.model_uri: " in line, line
    return line


@pytest.mark.parametrize("uri, reason", [
    ("s3://models/does/not/exist.bin", "not found"),
    ("s3://models/no-such-prefix/", "not found"),
    ("s3://no-such-bucket/model.bin", "not found"),
])
def test_missing_model_fails_clearly_and_leaves_nothing(tmp_path, moto, s3, uri, reason):
    cache = tmp_path / "cache"
    server = start(tmp_path, moto, uri, cache, wait=False)
    try:
        message = failed_message(server)
        assert f"cannot fetch model {uri}: {reason}" in message, message
        (logged,) = [l for l in server.log_lines() if l.get("message") == "predictor failed to load"]
        assert uri in logged["error"] and reason in logged["error"]
    finally:
        server.stop()
    assert cache_files(cache) == []


def test_no_credentials_fails_clearly(tmp_path, moto, s3):
    s3.put_object(Bucket=BUCKET, Key="creds/model.bin", Body=b"weights")
    cache = tmp_path / "cache"
    server = start(tmp_path, moto, "s3://models/creds/model.bin", cache, wait=False,
                   AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="")
    try:
        message = failed_message(server)
        assert "cannot fetch model s3://models/creds/model.bin: no credentials" in message, message
    finally:
        server.stop()
    assert cache_files(cache) == []


def test_two_processes_starting_together_download_once(tmp_path, moto, s3):
    size = 48 * MiB
    expected = upload_large(s3, BUCKET, "together/weights.bin", size, seed=2)
    cache = tmp_path / "cache"
    mark = moto.mark()
    servers = [start(tmp_path, moto, "s3://models/together/", cache, wait=False) for _ in range(2)]
    try:
        for server in servers:
            server.wait_ready(timeout=120)
            assert files_served(server)["files"]["weights.bin"] == {"size": size, "md5": expected}
        gets = moto.object_gets(BUCKET, "together/weights.bin", since=mark)
        assert sorted(g["range"] for g in gets) == sorted({g["range"] for g in gets})  # no range twice
        assert len(gets) == 3  # 48 MiB in 16 MiB ranges, once
        downloaded = [events(s, "model ready")[0]["downloaded"] for s in servers]
        assert sorted(downloaded) == [False, True]
        print(f"two processes: downloads {downloaded}; waited: "
              f"{[bool(events(s, 'model download: waiting for another process downloading it')) for s in servers]}")
    finally:
        for server in servers:
            server.stop()


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


LARGE = 200 * MiB


@pytest.fixture(scope="module")
def large(s3):
    """A generated 200 MiB object, uploaded by multipart from a stream; its MD5."""
    return upload_large(s3, BUCKET, "large/weights.bin", LARGE, seed=3)


def test_large_object_streams_to_disk_in_flat_memory_and_readiness_waits(tmp_path, moto, s3, large):
    size, expected = LARGE, large
    s3.put_object(Bucket=BUCKET, Key="small/weights.bin", Body=b"w" * 1000)

    small = start(tmp_path, moto, "s3://models/small/", tmp_path / "cache-small")
    try:
        baseline = peak_rss_mib(small.proc.pid)
    finally:
        small.stop()

    # As in the image: its Dockerfile caps glibc's malloc arenas (16 transfer threads fragment ~100 MiB otherwise).
    arenas = re.search(r"MALLOC_ARENA_MAX=(\d+)", (ROOT / "predictor_image" / "Dockerfile").read_text()).group(1)
    large = start(tmp_path, moto, "s3://models/large/", tmp_path / "cache-large", wait=False, MALLOC_ARENA_MAX=arenas)
    statuses: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                status = httpx.get(large.base + "/readyz", timeout=5).status_code
            except httpx.HTTPError:
                time.sleep(0.05)
                continue
            statuses.append(status)
            if status == 200:
                break
            time.sleep(0.05)
        assert statuses and statuses[-1] == 200, large.stderr()
        peak = peak_rss_mib(large.proc.pid)
        assert files_served(large)["files"]["weights.bin"] == {"size": size, "md5": expected}
        progress = events(large, "model download progress")
        (done,) = events(large, "model downloaded")
        ready_at = events(large, "model ready")[0]["time"]
        print(f"200 MiB model: peak RSS {peak:.0f} MiB vs {baseline:.0f} MiB with a 1 kB model; "
              f"{len(progress)} progress lines; {done['seconds']} s at {done['rate'] / MiB:.0f} MiB/s; "
              f"readyz {statuses.count(503)} x 503 then 200")
        assert 503 in statuses  # not ready while downloading and verifying
        assert all(line["time"] <= ready_at for line in progress)
        assert done["verified"] == ["md5-parts"]
        # The transfer machinery buffers tens of MiB (16 ranges in flight, an I/O queue); never the 200 MiB.
        assert peak - baseline < 64, (peak, baseline)
    finally:
        large.stop()


def test_a_download_killed_midway_is_never_used_and_is_cleared_by_the_next(tmp_path, moto, s3, large):
    cache = tmp_path / "cache"
    killed = start(tmp_path, moto, "s3://models/large/", cache, wait=False)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            progress = [l for l in events(killed, "model download progress") if 0 < l["bytes"] < l["total"]]
            if progress:
                break
            assert killed.proc.poll() is None, killed.stderr()
            time.sleep(0.02)
        assert progress, "no progress line while downloading"
        killed.signal(signal.SIGKILL)
        killed.proc.wait(timeout=10)
    finally:
        killed.stop()
    assert not (cache / "entries").exists() or list((cache / "entries").iterdir()) == []  # nothing usable
    assert list((cache / "tmp").iterdir())  # the partial download, left by SIGKILL

    server = start(tmp_path, moto, "s3://models/large/", cache)
    try:
        assert files_served(server)["files"]["weights.bin"] == {"size": LARGE, "md5": large}
        assert events(server, "model ready")[0]["downloaded"] is True  # downloaded afresh, not resumed from junk
    finally:
        server.stop()
    assert list((cache / "tmp").iterdir()) == []  # cleared by the next download of that version
