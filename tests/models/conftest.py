"""Fixtures of the model tests: one moto server per test module, stopped by pid at its end."""

from __future__ import annotations

import pytest

from .moto_s3 import AWS_VARS, MotoS3


@pytest.fixture(autouse=True)
def isolated_from_aws(monkeypatch):
    """No credentials, profile or endpoint of the machine running the tests reaches the servers they start."""
    for name in AWS_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = MotoS3(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()
