"""Attacks on api.yaml by a careless author: endpoints with dot segments.

`networking.endpoint: /x/../healthz` (or `/..`, `/a/./b`) passed validation, though every HTTP client removes dot
segments before sending (RFC 3986 5.2.4): such an API is never reached as written, and `/x/../healthz` is the
server's own route once a client or proxy normalizes it. Now refused, naming the field."""

from __future__ import annotations

import pydantic
import pytest

from myelin.spec import realtime


@pytest.mark.parametrize("endpoint", ["/..", "/.", "/x/../healthz", "/a/./b", "/a/.."])
def test_dot_segments_are_refused(endpoint):
    with pytest.raises(pydantic.ValidationError, match="'.' or '..' segments"):
        realtime.ApiSpec.model_validate({"name": "x", "networking": {"endpoint": endpoint}})


@pytest.mark.parametrize("endpoint", ["/a.b", "/...", "/v1.2/predict", "/.well-known"])
def test_dots_inside_a_segment_are_fine(endpoint):
    assert realtime.ApiSpec.model_validate({"name": "x", "networking": {"endpoint": endpoint}}).endpoint == endpoint
