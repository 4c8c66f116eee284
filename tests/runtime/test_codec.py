"""Payload decoding by content type and result encoding by type (unit level)."""

import asyncio

import numpy as np
import orjson
import pytest

from myelin import codec
from myelin.errors import HTTPError


def decode(ctype: bytes, body: bytes):
    return asyncio.run(codec.decode(ctype, body))


def test_decoding_by_content_type():
    assert decode(b"application/json", b'{"a": [1, 2]}') == {"a": [1, 2]}
    assert decode(b"application/json; charset=utf-8", b"[1]") == [1]
    assert decode(b"application/vnd.api+json", b"{}") == {}
    assert decode(b"text/plain", "héllo".encode()) == "héllo"
    assert decode(b"text/plain; charset=latin-1", "héllo".encode("latin-1")) == "héllo"
    assert decode(b"application/x-www-form-urlencoded", b"a=1&b=two") == {"a": "1", "b": "two"}
    assert decode(b"image/png", b"\x89PNG") == b"\x89PNG"
    assert decode(b"", b"raw") == b"raw"


def test_multipart_form():
    body = (b"--XX\r\nContent-Disposition: form-data; name=\"field\"\r\n\r\nvalue\r\n"
            b"--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n\x00\x01\r\n--XX--\r\n")
    form = decode(b"multipart/form-data; boundary=XX", body)
    assert form["field"] == "value"
    assert asyncio.run(form["file"].read()) == b"\x00\x01"


@pytest.mark.parametrize("ctype, body", [
    (b"application/json", b"{bad"), (b"application/json", b""), (b"application/json", b"[" * 5000 + b"]" * 5000),
    (b"text/plain", b"\xff\xfe\xfa"), (b"text/plain; charset=utf-16", b"\x00\xd8"),
    (b"application/x-www-form-urlencoded", b'{"a": 1}'),
    (b"multipart/form-data", b"no boundary"),
    (b"multipart/form-data; boundary=XX", b"--XX\r\nContent-Disposition: form-data\r\n\r\nv\r\n--XX--\r\n"),
])
def test_bad_input_is_a_400(ctype, body):
    with pytest.raises(HTTPError) as info:
        decode(ctype, body)
    assert info.value.status_code == 400


@pytest.mark.parametrize("charset", [b"nope", b"punycode", b"unicode_escape", b"rot13", b"idna", b"utf-7"])
def test_unlisted_charsets_are_a_415(charset):
    with pytest.raises(HTTPError) as info:
        decode(b"text/plain; charset=" + charset, b"abc-9999999999")
    assert info.value.status_code == 415 and info.value.error_type == "unsupported_media_type"


def test_json_sent_as_a_form_says_which_header_to_add():
    with pytest.raises(HTTPError) as info:
        decode(b"application/x-www-form-urlencoded", b' {"features": [1, 2]}')
    assert info.value.status_code == 400
    assert "Content-Type: application/json" in info.value.message and "curl -d" in info.value.message


def test_large_text_bodies_are_decoded_off_the_event_loop(monkeypatch):
    import threading

    from myelin import codec

    seen = []
    original = codec._decode_text
    monkeypatch.setattr(codec, "_decode_text", lambda body, name: seen.append(threading.get_ident()) or original(body, name))

    async def both() -> tuple[str, str]:
        small = await codec.decode(b"text/plain", b"small")
        large = await codec.decode(b"text/plain; charset=latin-1", b"\xe9" * (codec.OFF_LOOP_BYTES + 1))
        return small, large

    loop_thread = threading.get_ident()
    small, large = asyncio.run(both())
    assert small == "small" and large == "\xe9" * (codec.OFF_LOOP_BYTES + 1)
    assert seen[0] == loop_thread and seen[1] != loop_thread


def test_encoding_by_type():
    assert codec.encode({"a": 1}) == (b'{"a":1}', codec.JSON)
    body, ctype = codec.encode({"v": np.arange(3), "f": np.float32(0.5), "i": np.int64(2)})
    assert orjson.loads(body) == {"v": [0, 1, 2], "f": 0.5, "i": 2} and ctype == codec.JSON
    assert codec.encode(np.array([[1, 2]])) == (b"[[1,2]]", codec.JSON)
    assert codec.encode("hi") == (b"hi", codec.TEXT)
    assert codec.encode(b"\x00") == (b"\x00", codec.OCTETS)
    assert codec.encode(3) == (b"3", codec.JSON)
    assert codec.encode(None) == (b"null", codec.JSON)
    with pytest.raises(TypeError, match="cannot be encoded"):
        codec.encode(object())


def test_log_timestamps_match_datetime_formatting():
    import random
    from datetime import datetime, timezone

    from myelin.logs import _iso

    rng = random.Random(7)
    stamps = [1795322478.0452, 1795322478.9999, 1795322478.0, 1795322478.0005] + [
        rng.uniform(1.7e9, 1.9e9) for _ in range(2000)]
    for ts in stamps:
        expected = datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert _iso(ts) == expected, ts
