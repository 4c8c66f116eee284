"""Fuzzing: schemathesis against the server's OpenAPI description; hypothesis on the codecs."""

from __future__ import annotations

import asyncio
import math
import shutil
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from myelin import codec
from myelin.errors import HTTPError

from .helpers import APIS, Tally

EXAMPLES_PER_OPERATION = 40
REQUEST_TIMEOUT_S = 10
KEY = "fuzz-key-5b1e0c"


def test_schemathesis_finds_no_server_error(start_server, tmp_path):
    import schemathesis
    from schemathesis import GenerationMode

    apis = tmp_path / "apis"
    for name in ("guarded", "versioned", "keyed", "slow"):
        shutil.copytree(APIS / name, apis / name)
    server = start_server("local", str(apis), "--no-reload", env={"MYELIN_RELIABILITY_KEYS": KEY})
    schema = schemathesis.openapi.from_url(f"{server.base}/openapi.json")
    tally = Tally()
    server_errors = []
    slowest = [0.0]
    operations = []

    for result in schema.get_all_operations():
        operation = result.ok()
        operations.append(operation.label)
        strategy = st.one_of(operation.as_strategy(generation_mode=mode)
                             for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE))

        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def exercise(case) -> None:
            started = time.monotonic()
            try:
                response = case.call(base_url=server.base, timeout=REQUEST_TIMEOUT_S)
            except Exception as err:  # noqa: BLE001 - a hang or a dropped connection is a finding
                tally.add(type(err).__name__)
                server_errors.append((case.operation.label, type(err).__name__, repr(case.body)[:120]))
                return
            slowest[0] = max(slowest[0], time.monotonic() - started)
            tally.add(response.status_code)
            documented_503 = response.status_code == 503 and response.headers.get("retry-after")
            if response.status_code >= 500 and not documented_503:
                server_errors.append((case.operation.label, response.status_code, response.text[:200], repr(case.body)[:120]))

        exercise()

    print(tally.summary("schemathesis") + f", operations={len(operations)}, slowest={slowest[0]:.2f}s")
    assert {"POST /guarded", "POST /keyed", "GET /healthz", "GET /readyz", "GET /metrics"} <= set(operations), operations
    assert not server_errors, server_errors[:5]
    assert tally.sent >= len(operations) and slowest[0] < REQUEST_TIMEOUT_S
    assert httpx.get(f"{server.base}/readyz", timeout=5).status_code == 200  # still whole


CONTENT_TYPES = st.one_of(
    st.sampled_from([b"application/json", b"application/JSON; charset=latin-1", b"application/x+json", b"text/plain",
                     b"text/plain; charset=utf-16", b"text/plain; charset=nonsense", b"text/csv; charset=",
                     b"application/x-www-form-urlencoded", b"multipart/form-data",
                     b"multipart/form-data; boundary=xyz", b"multipart/form-data; boundary=", b"image/png", b""]),
    st.binary(max_size=60),
)
BODIES = st.one_of(
    st.binary(max_size=2048),
    st.text(max_size=500).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.builds(lambda b: b"--xyz\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n" + b + b"\r\n--xyz--\r\n",
              st.binary(max_size=200)),
    st.builds(lambda n, c: c * n, st.integers(0, 3000), st.sampled_from([b"[", b"{\"a\":", b"\"", b"\\"])),
)


@settings(max_examples=600, deadline=None, database=None, derandomize=True)
@given(content_type=CONTENT_TYPES, body=BODIES)
def test_decode_never_raises_anything_but_400(content_type, body):
    """Bad input is a 400; a charset outside the allow-list a 415; nothing else escapes decoding."""
    try:
        asyncio.run(codec.decode(content_type, body))
    except HTTPError as err:
        assert (err.status_code, err.error_type) in ((400, "bad_request"), (415, "unsupported_media_type")), err


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=30,
)


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and (a == b or math.isclose(a, b))
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b and type(a) is type(b)


@settings(max_examples=400, deadline=None, database=None, derandomize=True)
@given(value=JSON_VALUES)
def test_encode_round_trips_json_values(value):
    body, ctype = codec.encode(value)
    if isinstance(value, str):
        assert ctype == codec.TEXT and asyncio.run(codec.decode(ctype, body)) == value
    else:
        assert ctype == codec.JSON
        assert _same(asyncio.run(codec.decode(ctype, body)), value)


@settings(max_examples=200, deadline=None, database=None, derandomize=True)
@given(value=st.binary(max_size=1024))
def test_encode_round_trips_bytes(value):
    body, ctype = codec.encode(value)
    assert ctype == codec.OCTETS and asyncio.run(codec.decode(ctype, body)) == value


@pytest.mark.parametrize("value", [object(), {1j: 1}, [float("nan")], 2**70, {"x": 2**70}])
def test_encode_of_the_unencodable_raises_type_error_only(value):
    # The runtime turns a TypeError into its "result could not be encoded" 500; anything else would escape.
    try:
        codec.encode(value)
    except TypeError:
        pass


def test_malformed_bodies_over_http_get_no_5xx(start_server):
    """The codec strategies above, sent to a live server with any content type: 2xx/4xx only, never a hang."""
    server = start_server("serve", str(APIS / "guarded"))
    tally = Tally()
    bad = []
    with httpx.Client(timeout=REQUEST_TIMEOUT_S) as http:

        @settings(max_examples=300, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(content_type=CONTENT_TYPES, body=BODIES)
        def exercise(content_type, body):
            try:
                r = http.post(f"{server.base}/guarded", content=body, headers={"content-type": content_type})
            except httpx.LocalProtocolError:  # a header value httpx itself refuses to send (e.g. a newline)
                return
            except httpx.HTTPError as err:
                tally.add(type(err).__name__)
                bad.append((content_type, body[:80], type(err).__name__))
                return
            tally.add(r.status_code)
            if r.status_code >= 500:
                bad.append((content_type, body[:80], r.status_code, r.text[:200]))

        exercise()
    print(tally.summary("malformed bodies over HTTP"))
    assert not bad, bad[:5]
    assert tally.sent > 100
