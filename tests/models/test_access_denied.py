"""Access denied, with moto enforcing IAM: the API's user gets exactly the policy `s3_scope` writes.

What moto simulates (checked in moto 5.2.5): once `/moto-api/reset-auth` turns authorization on,
requests are signed with an IAM user's keys and `s3:GetObject` is allowed or denied per object ARN,
so a key outside the scope (`other/...`, and `allowedx/...` beside `allowed/`) answers 403.
What it does not: moto ignores IAM *conditions*, so the `s3:prefix` condition on `s3:ListBucket`
is not enforced here (listing another prefix succeeds); the GETs and HEADs that follow are still
denied, and that is what these tests see.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from myelin.spec import s3_scope

from .test_model_fetch import API, cache_files, failed_message, files_served
from conftest import ServerProcess

ALLOWED = "s3://models/allowed"


@pytest.fixture(scope="module")
def reader(moto):
    """Objects in and out of scope, and a user whose only policy is the scope of ALLOWED; then IAM is enforced."""
    s3, iam = moto.client(), moto.client("iam")
    s3.create_bucket(Bucket="models")
    for key in ("allowed/model.bin", "allowed/sub/extra.bin", "other/model.bin", "allowedx/model.bin"):
        s3.put_object(Bucket="models", Key=key, Body=f"bytes of {key}".encode())
    iam.create_user(UserName="api-reader")
    iam.put_user_policy(UserName="api-reader", PolicyName="model",
                        PolicyDocument=json.dumps(s3_scope(ALLOWED).policy_document()))
    key = iam.create_access_key(UserName="api-reader")["AccessKey"]
    assert httpx.post(moto.endpoint + "/moto-api/reset-auth", content=b"0").status_code == 200
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


def serve(tmp_path: Path, moto, reader, uri: str, cache: Path, ready_status: int | None) -> ServerProcess:
    spec = {"name": "model-files", "predictor": {"model_uri": uri}}
    server = ServerProcess(["serve", str(API)], tmp_path, moto.env(
        MYELIN_API_SPEC=json.dumps(spec), MYELIN_MODEL_CACHE=str(cache), **reader))
    if ready_status is not None:
        server.wait_ready(timeout=120, status=ready_status)
    return server


def test_the_scope_reads_its_own_model(tmp_path, moto, reader):
    server = serve(tmp_path, moto, reader, ALLOWED, tmp_path / "cache", 200)
    try:
        assert set(files_served(server)["files"]) == {"model.bin", "sub/extra.bin"}
    finally:
        server.stop()


@pytest.mark.parametrize("uri", ["s3://models/other/model.bin", "s3://models/other/", "s3://models/allowedx/model.bin"])
def test_access_denied_fails_clearly_and_leaves_nothing(tmp_path, moto, reader, uri):
    cache = tmp_path / "cache"
    server = serve(tmp_path, moto, reader, uri, cache, None)  # exits 1: failed_message
    try:
        message = failed_message(server)
        assert f"cannot fetch model {uri}: access denied" in message, message
    finally:
        server.stop()
    assert cache_files(cache) == []
