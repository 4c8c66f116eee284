"""The model cache's rules in-process (against the module's moto): versions, eviction, verification;
and the pieces around it: the spec field, the IAM scope, `model_dir` for `__init__`, settings."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from myelin.loader import LoadError, load_predictor
from myelin.model_files import ModelCache, ModelFetchError, S3Object, resolve_model_version, verify_file
from myelin.settings import Settings, SettingsError
from myelin.spec import SpecError, parse_model_uri, s3_scope, spec_from_dict

MiB = 2**20


@pytest.fixture
def s3(moto, monkeypatch):
    """The production client path: boto3's standard chain, pointed at moto by AWS_ENDPOINT_URL."""
    for name, value in moto.env().items():
        monkeypatch.setenv(name, value)
    client = moto.client()
    if "cache" not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket="cache")
    return client


def put(s3, key: str, size: int, fill: bytes) -> None:
    s3.put_object(Bucket="cache", Key=key, Body=fill * size)


def entries(cache: ModelCache) -> set[str]:
    return {p.name for p in cache.entries.iterdir()}


def test_version_names_the_entry_and_changes_only_with_the_files(tmp_path, s3):
    put(s3, "v/model.bin", 100, b"a")
    first = resolve_model_version("s3://cache/v/model.bin")
    assert first == resolve_model_version("s3://cache/v/model.bin")  # stable
    assert len(first) == 64
    cache = ModelCache(tmp_path, 10**9)
    model = cache.fetch("s3://cache/v/model.bin", tmp_path)
    assert model.version == first and model.path == tmp_path / "entries" / first / "files"
    put(s3, "v/model.bin", 100, b"b")  # same key and size, new content: new ETag
    assert resolve_model_version("s3://cache/v/model.bin") != first
    assert resolve_model_version("s3://cache/v/") != resolve_model_version("s3://cache/v/model.bin")
    assert resolve_model_version("models/local") is None
    with pytest.raises(ModelFetchError, match=r"cannot fetch model s3://cache/nothing/here: not found"):
        resolve_model_version("s3://cache/nothing/here")


def test_lru_eviction_never_evicts_a_model_in_use(tmp_path, s3):
    for name in "abcde":
        put(s3, f"lru/{name}.bin", MiB, name.encode())
    reports: list[tuple[str, str, dict]] = []
    cache = ModelCache(tmp_path, int(2.5 * MiB))  # room for two 1 MiB models, not three

    def fetch(name: str):
        return cache.fetch(f"s3://cache/lru/{name}.bin", tmp_path, lambda level, msg, **f: reports.append((level, msg, f)))

    a = fetch("a")
    a.release()
    b = fetch("b")
    b.release()
    c = fetch("c")  # a is the least recently used: evicted
    assert entries(cache) == {b.version, c.version}
    b.release()
    again = fetch("b")  # a hit refreshes b's last use
    assert again.downloaded is False
    again.release()
    d = fetch("d")  # c is now the least recently used, but c is in use: b goes although used more recently
    assert entries(cache) == {c.version, d.version}
    assert [f["evicted"] for _, msg, f in reports if msg.startswith("model cache: evicted")] == [a.version, b.version]
    assert list(cache.tmp.iterdir()) == []
    e = fetch("e")  # c and d both in use: over the bound, said so, and served anyway
    assert entries(cache) == {c.version, d.version, e.version}
    assert any(level == "warning" and "over its bound" in msg for level, msg, _ in reports)
    for model in (c, d, e):
        model.release()


def test_a_process_holding_a_model_keeps_it_from_another_processes_eviction(tmp_path, s3):
    put(s3, "held/x.bin", MiB, b"x")
    put(s3, "held/y.bin", MiB, b"y")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from myelin.model_files import ModelCache; "
         f"m = ModelCache({str(tmp_path)!r}, 10**9).fetch('s3://cache/held/x.bin', '.'); print(m.version, flush=True); "
         "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        held = holder.stdout.readline().strip()
        assert len(held) == 64, held
        cache = ModelCache(tmp_path, int(1.5 * MiB))
        y = cache.fetch("s3://cache/held/y.bin", tmp_path)
        assert entries(cache) == {held, y.version}  # x is served by the other process: kept
        y.release()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    z = ModelCache(tmp_path, int(1.5 * MiB)).fetch("s3://cache/held/y.bin", tmp_path)  # a hit; nothing to evict
    assert z.downloaded is False
    put(s3, "held/z.bin", MiB, b"z")
    cache = ModelCache(tmp_path, int(2.5 * MiB))
    cache.fetch("s3://cache/held/z.bin", tmp_path)  # the holder exited: its lock went with it, x can go
    assert held not in entries(cache)


@pytest.mark.parametrize("size, reason", [
    (20 * MiB, "changed during download"),  # ranged GETs carry If-Match: S3 answers 412
    (3 * MiB, "verification failed"),  # one plain GET got the new bytes: their MD5 is not the listed ETag
])
def test_an_object_changed_during_the_download_is_refused_and_nothing_is_kept(tmp_path, s3, size, reason):
    from myelin.model_files import list_model, s3_client

    put(s3, "moving/model.bin", size, b"1")
    cache = ModelCache(tmp_path, 10**9)
    client = s3_client()
    listing = list_model(parse_model_uri("s3://cache/moving/model.bin"), client)
    put(s3, "moving/model.bin", size, b"2")  # replaced after the listing, before the GETs
    for folder in (cache.entries, cache.locks, cache.tmp):
        folder.mkdir(parents=True)
    with pytest.raises(ModelFetchError, match=rf"cannot fetch model s3://cache/moving/model.bin: {reason}"):
        cache._ensure(client, listing, lambda *a, **k: None, {})
    assert list(cache.entries.iterdir()) == [] and list(cache.tmp.iterdir()) == []
    assert cache.fetch("s3://cache/moving/model.bin", tmp_path).downloaded is True  # the next start gets the new one


def test_an_unwritable_cache_is_named(tmp_path, s3):
    put(s3, "ro/model.bin", 10, b"r")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ModelFetchError, match=r"s3://cache/ro/model.bin: model cache not writable .*MYELIN_MODEL_CACHE"):
        ModelCache(blocker / "cache", 10**9).fetch("s3://cache/ro/model.bin", tmp_path)


def test_verify_file_checks_size_md5_and_multipart_etags(tmp_path):
    data = os.urandom(5 * MiB + 3)
    path = tmp_path / "f"
    path.write_bytes(data)
    md5 = hashlib.md5(data).hexdigest()
    assert verify_file(path, S3Object("k", "f", len(data), f'"{md5}"'), False, None) == "md5"
    with pytest.raises(ValueError, match="bytes on disk"):
        verify_file(path, S3Object("k", "f", len(data) + 1, f'"{md5}"'), False, None)
    with pytest.raises(ValueError, match="does not match ETag"):
        verify_file(path, S3Object("k", "f", len(data), '"' + "0" * 32 + '"'), False, None)
    parts = [data[i:i + 2 * MiB] for i in range(0, len(data), 2 * MiB)]
    multipart = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + f"-{len(parts)}"
    assert verify_file(path, S3Object("k", "f", len(data), f'"{multipart}"'), False, None) == "md5-parts"
    assert verify_file(path, S3Object("k", "f", len(data), f'"{multipart}"'), False, 2 * MiB) == "md5-parts"
    with pytest.raises(ValueError, match="multipart ETag"):
        verify_file(path, S3Object("k", "f", len(data), '"' + "1" * 32 + '-3"'), False, None)
    # SSE-KMS: the ETag is no MD5, so only the size can be checked.
    assert verify_file(path, S3Object("k", "f", len(data), '"' + "2" * 32 + '"'), True, None) == "size"


def test_local_model_uri_is_used_in_place(tmp_path):
    folder = tmp_path / "api"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "w.bin").write_bytes(b"123")
    cache = ModelCache(tmp_path / "cache", 10**9)
    assert cache.fetch("model", folder).path == (folder / "model").resolve()
    assert cache.fetch("model/w.bin", folder).path == (folder / "model").resolve()  # a file: its folder
    assert cache.fetch(str(folder / "model"), tmp_path).path == (folder / "model").resolve()
    with pytest.raises(ModelFetchError, match=r"cannot fetch model nowhere: not found"):
        cache.fetch("nowhere", folder)
    assert not (tmp_path / "cache").exists()


# -------------------------------------------------------------------------------- spec and scope


@pytest.mark.parametrize("uri, problem", [
    ("gs://bucket/model", "unsupported scheme 'gs'"),
    ("s3://Bad_Bucket/model", "invalid S3 bucket name"),
    ("s3://bucket/model?version=1", "unknown query parameter(s) version"),
    ("s3://bucket/model/?versionId=abc", "pins one object"),
    ("s3://bucket/model?versionId=", "versionId needs exactly one"),
    ("s3://bucket/model#frag", "fragment"),
    ("", "must be an s3://bucket/prefix URI or a local path"),
])
def test_bad_model_uri_names_the_field(uri, problem):
    with pytest.raises(SpecError) as info:
        spec_from_dict({"name": "x", "predictor": {"model_uri": uri}}, "apis/x/api.yaml")
    assert "apis/x/api.yaml: predictor.model_uri: " in str(info.value) and problem in str(info.value)


def test_model_uri_and_model_disk_parse():
    spec = spec_from_dict({"name": "x", "predictor": {"model_uri": "s3://my-models/wine/?"[:-1]},
                           "compute": {"model_disk": "20Gi"}}, "api.yaml")
    assert spec.predictor.model_uri == "s3://my-models/wine/" and spec.compute.model_disk_bytes == 20 * 2**30
    assert spec_from_dict({"name": "x"}, "api.yaml").compute.model_disk is None
    uri = parse_model_uri("s3://my-models/wine/model.bin?versionId=3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY")
    assert (uri.bucket, uri.key, uri.version_id, uri.is_prefix) == (
        "my-models", "wine/model.bin", "3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY", False)
    for bad, words in (("lots", "invalid memory quantity"), ("512k", "at least 1Mi"), (True, "size like")):
        with pytest.raises(SpecError, match=words):
            spec_from_dict({"name": "x", "compute": {"model_disk": bad}}, "api.yaml")


def test_s3_scope_is_exactly_the_model():
    one = s3_scope("s3://my-models/wine/model.bin")
    assert (one.bucket, one.prefix) == ("my-models", "wine/model.bin")
    assert one.object_arns == ["arn:aws:s3:::my-models/wine/model.bin", "arn:aws:s3:::my-models/wine/model.bin/*"]
    assert one.list_prefixes == ["wine/model.bin", "wine/model.bin/*"] and one.actions == ["s3:GetObject"]
    prefix = s3_scope("s3://my-models/wine/", partition="aws-cn")
    assert prefix.object_arns == ["arn:aws-cn:s3:::my-models/wine/*"] and prefix.list_prefixes == ["wine/*"]
    pinned = s3_scope("s3://my-models/wine/model.bin?versionId=v1")
    assert pinned.actions == ["s3:GetObject", "s3:GetObjectVersion"]
    whole = s3_scope("s3://my-models")
    assert whole.object_arns == ["arn:aws:s3:::my-models/*"] and whole.list_prefixes == ["*"]
    doc = one.policy_document()
    assert [s["Action"] for s in doc["Statement"]] == [["s3:GetObject"], ["s3:ListBucket"]]
    assert doc["Statement"][1]["Resource"] == ["arn:aws:s3:::my-models"]
    assert doc["Statement"][1]["Condition"] == {"StringLike": {"s3:prefix": ["wine/model.bin", "wine/model.bin/*"]}}
    assert s3_scope("models/local") is None


# -------------------------------------------------------------------------------- model_dir for __init__


def api_folder(tmp_path: Path, init: str) -> Path:
    folder = tmp_path / "api"
    folder.mkdir(parents=True)
    (folder / "api.yaml").write_text("name: x\n")
    (folder / "predictor.py").write_text(f"class Predictor:\n    {init}\n        self.args = (config, locals())\n"
                                         "    def predict(self, payload):\n        return payload\n")
    return folder


@pytest.mark.parametrize("init, gets", [
    ("def __init__(self, config, model_dir):", True),
    ("def __init__(self, config, **extra):", True),
    ("def __init__(self, config):", False),
    ("def __init__(self, config, model_dir=None):", True),
])
def test_model_dir_is_passed_when_declared(tmp_path, init, gets):
    folder = api_folder(tmp_path, init)
    spec = spec_from_dict({"name": "x", "predictor": {"model_uri": "model"}}, "api.yaml")
    instance = load_predictor(folder, spec, tmp_path / "model").instance
    passed = instance.args[1].get("model_dir", instance.args[1].get("extra", {}).get("model_dir"))
    assert (passed == str(tmp_path / "model")) is gets


def test_model_dir_declared_without_model_uri_is_a_clear_error(tmp_path):
    folder = api_folder(tmp_path, "def __init__(self, config, model_dir):")
    with pytest.raises(LoadError, match="declares model_dir, but api.yaml sets no predictor.model_uri"):
        load_predictor(folder, spec_from_dict({"name": "x"}, "api.yaml"))
    optional = api_folder(tmp_path / "b", "def __init__(self, config, model_dir=None):")
    assert load_predictor(optional, spec_from_dict({"name": "x"}, "api.yaml")).instance.args[1]["model_dir"] is None


# -------------------------------------------------------------------------------- settings and imports


def test_cache_settings(tmp_path):
    settings = Settings.from_env({"MYELIN_MODEL_CACHE": "~/models-here", "MYELIN_MODEL_CACHE_MAX_BYTES": "5Gi",
                                  "MYELIN_MODEL_VERSION": "abc"})
    assert settings.model_cache == os.path.expanduser("~/models-here") and not settings.model_cache.startswith("~")
    assert settings.model_cache_max_bytes == 5 * 2**30 and settings.model_version == "abc"
    assert Settings.from_env({"MYELIN_MODEL_CACHE_MAX_BYTES": "1000000"}).model_cache_max_bytes == 10**6
    default = Settings.from_env({})
    assert default.model_cache == os.path.expanduser("~/.cache/myelin/models") and default.model_cache_max_bytes == 20 * 2**30
    for bad in ("lots", "0", "-5Gi"):
        with pytest.raises(SettingsError, match="MYELIN_MODEL_CACHE_MAX_BYTES"):
            Settings.from_env({"MYELIN_MODEL_CACHE_MAX_BYTES": bad})


def test_serving_without_model_uri_never_imports_boto3():
    code = ("import sys, myelin.cli, myelin.local, myelin.server, myelin.runtime, myelin.model_files, myelin.spec; "
            "bad = [m for m in ('boto3', 'botocore', 's3transfer') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
