"""Issue 18, items 12 and 13: the files Myelin keeps on disk.

- The model cache (model_files.py) serves only whole files: on a hit every file's size is checked against the
  entry's manifest, and an entry that does not match (a file truncated to 0 bytes here) is logged and downloaded
  again; a download is fsynced (files, manifest, folders) before it is renamed into place, and the folder it is
  renamed into after. Against `myelin serve` and moto (S3) on 127.0.0.1.
- An AsyncAPI's SQLite files (database, -wal, -shm) are created 0600 in a folder created 0700, whatever the umask
  lets through: they hold payloads, stored headers and results.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import httpx
import pytest

from async_jobs.conftest import make_api
from models.conftest import isolated_from_aws, moto  # noqa: F401 - fixtures: moto (S3) on 127.0.0.1
from models.test_model_fetch import BUCKET, events, files_served, start
from myelin import model_files
from myelin.model_files import ModelCache

MiB = 2**20


@pytest.fixture(scope="module")
def s3(moto):  # noqa: F811
    client = moto.client()
    client.create_bucket(Bucket=BUCKET)
    return client


def test_a_truncated_cached_file_is_downloaded_again(tmp_path, moto, s3):  # noqa: F811
    """Today a hit only checks that manifest.json exists: the 0-byte file is served, readiness 200."""
    data = os.urandom(MiB + 5)
    s3.put_object(Bucket=BUCKET, Key="truncated/model.bin", Body=data)
    s3.put_object(Bucket=BUCKET, Key="truncated/config.json", Body=b'{"layers": 3}')
    cache = tmp_path / "cache"
    uri = "s3://models/truncated/"
    first = start(tmp_path, moto, uri, cache)
    try:
        files = files_served(first)["files"]
        assert files["model.bin"]["size"] == MiB + 5
    finally:
        first.stop()
    (entry,) = (cache / "entries").iterdir()
    cached = entry / "files" / "model.bin"
    cached.chmod(0o644)  # the cache keeps its files read-only; a full disk or a crash needs no permission
    os.truncate(cached, 0)
    mark = moto.mark()

    second = start(tmp_path, moto, uri, cache)
    try:
        files = files_served(second)["files"]
        assert files["model.bin"]["size"] == MiB + 5, files  # the whole file again, not the 0 bytes
        assert files["config.json"]["size"] == len(b'{"layers": 3}')
        (warning,) = events(second, "model cache: the cached model does not match its manifest; downloading it again")
        assert warning["level"] == "warning"
        assert warning["damage"] == f"model.bin: 0 bytes on disk, {MiB + 5} in the manifest"
        info = httpx.get(second.base + "/info").json()["apis"][0]["model"]
        assert info["downloaded"] is True
    finally:
        second.stop()
    assert len(moto.object_gets(BUCKET, "truncated/model.bin", since=mark)) >= 1  # fetched from S3 again
    assert [p.name for p in (cache / "entries").iterdir()] == [entry.name]
    assert list((cache / "tmp").iterdir()) == []  # the damaged copy is gone, not left behind
    assert (entry / "files" / "model.bin").read_bytes() == data

    # A whole entry is a plain hit: nothing downloaded, nothing logged.
    mark = moto.mark()
    third = start(tmp_path, moto, uri, cache)
    try:
        assert files_served(third)["files"]["model.bin"]["size"] == MiB + 5
        assert not events(third, "model cache: the cached model does not match its manifest; downloading it again")
    finally:
        third.stop()
    assert moto.object_gets(BUCKET, "truncated/model.bin", since=mark) == []


def test_a_download_is_fsynced_before_it_is_renamed_into_place(tmp_path, moto, s3, monkeypatch):  # noqa: F811
    """Without the fsyncs a power cut could keep the rename (the entry looks complete) and lose the data."""
    for name, value in moto.env().items():
        monkeypatch.setenv(name, value)
    s3.put_object(Bucket=BUCKET, Key="durable/a.bin", Body=os.urandom(MiB))
    s3.put_object(Bucket=BUCKET, Key="durable/sub/b.bin", Body=b"b" * 1000)
    done: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        done.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src, dst) -> None:
        done.append(("rename", f"{src} -> {dst}"))
        real_rename(src, dst)

    monkeypatch.setattr(model_files.os, "fsync", fsync)
    monkeypatch.setattr(model_files.os, "rename", rename)
    cache = ModelCache(tmp_path / "cache", 10**9)
    model = cache.fetch("s3://models/durable/", tmp_path)
    model.release()
    entry = model.path.parent
    (at,) = [i for i, (what, _) in enumerate(done) if what == "rename" and str(entry) in _]
    work = Path(done[at][1].split(" -> ")[0])
    before = {path for what, path in done[:at] if what == "fsync"}
    after = {path for what, path in done[at + 1:] if what == "fsync"}
    for rel in ("files/a.bin", "files/sub/b.bin", "manifest.json", "files/sub", "files", ""):
        assert str(work / rel).rstrip("/") in before, (rel, done)
    assert str(cache.entries) in after  # the rename itself is durable


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_asyncapi_sqlite_files_are_private(start_server, tmp_path):
    """Today: 0755 folder, 0644 database and -wal/-shm files (under the usual umask 022)."""
    folder = make_api(tmp_path / "apis", name="private")
    state = tmp_path / "state" / "jobs"
    old = os.umask(0o022)  # the server inherits it: what a shell usually gives
    try:
        server = start_server("serve", str(folder), env={"MYELIN_STATE_DIR": str(state)})
    finally:
        os.umask(old)
    r = httpx.post(f"{server.base}/private", json={"secret": "payload"}, headers={"x-api-token": "stored"})
    assert r.status_code == 202, r.text
    db = state / "private.sqlite3"
    files = {p.name: mode(p) for p in state.iterdir()}
    assert {"private.sqlite3", "private.sqlite3-wal", "private.sqlite3-shm"} <= set(files), files
    assert mode(state) == 0o700
    assert files == {name: 0o600 for name in files}, {name: oct(m) for name, m in files.items()}
    assert mode(state.parent) == 0o755  # only the leaf, the state folder itself, is Myelin's to make private
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1


def test_an_existing_world_readable_job_store_is_narrowed(tmp_path):
    """A database an earlier version made 0644 is narrowed (with its -wal and -shm) when the store opens it."""
    from myelin.asyncapi.store_sqlite import SqliteJobStore

    state = tmp_path / "state"
    state.mkdir()
    db = state / "old.sqlite3"
    sqlite3.connect(db).close()
    db.chmod(0o644)
    store = SqliteJobStore(str(db), 3600.0)
    store.open()
    try:
        assert mode(db) == 0o600
    finally:
        store.close()
