"""Request payload decoding by content type and result encoding by Python type."""

from __future__ import annotations

import asyncio
import math
from typing import Any
from urllib.parse import parse_qsl

import orjson

from .errors import HTTPError

_JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS

#: Charsets a text body may declare (normalised: lower case, '_' as '-'); each decodes in linear time.
#: Any other Python codec name is refused (415): some are quadratic (punycode), some not text codecs at all.
CHARSETS = {
    "utf-8": "utf-8", "utf8": "utf-8", "us-ascii": "ascii", "ascii": "ascii",
    "latin-1": "latin-1", "latin1": "latin-1", "iso-8859-1": "latin-1", "iso8859-1": "latin-1",
    "utf-16": "utf-16", "utf-16le": "utf-16-le", "utf-16-le": "utf-16-le", "utf-16be": "utf-16-be",
    "utf-16-be": "utf-16-be", "utf-32": "utf-32", "utf-32le": "utf-32-le", "utf-32-le": "utf-32-le",
    "utf-32be": "utf-32-be", "utf-32-be": "utf-32-be",
}
#: Text bodies larger than this are decoded in a thread, so the event loop keeps answering (health probes).
OFF_LOOP_BYTES = 64 * 1024

JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"
OCTETS = b"application/octet-stream"


def media_type(content_type: bytes) -> tuple[bytes, bytes]:
    """b'Text/Plain; charset=latin-1' -> (b'text/plain', b'latin-1')."""
    main, _, params = content_type.partition(b";")
    charset = b"utf-8"
    if params:
        for part in params.split(b";"):
            key, _, value = part.strip().partition(b"=")
            if key.lower() == b"charset" and value:
                charset = value.strip(b"\"' ")
    return main.strip().lower(), charset


def _bad_input(message: str) -> HTTPError:
    return HTTPError(400, "bad_request", message)


def decode_json(body: bytes) -> Any:
    if not body:
        raise _bad_input("empty body: expected a JSON document")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise _bad_input(f"malformed JSON: {err}") from None


async def decode(content_type: bytes, body: bytes) -> Any:
    """JSON -> object, text/* -> str, form -> form mapping, anything else -> bytes."""
    if content_type == JSON:  # fast path: the common exact header
        return decode_json(body)
    mtype, charset = media_type(content_type)
    if mtype == b"application/json" or (mtype.startswith(b"application/") and mtype.endswith(b"+json")):
        return decode_json(body)
    if mtype.startswith(b"text/"):
        name = charset.decode("latin-1")
        codec = CHARSETS.get(name.lower().replace("_", "-"))
        if codec is None:
            raise HTTPError(415, "unsupported_media_type",
                            f"charset {name[:40]!r} is not supported; send utf-8 (or us-ascii, latin-1, utf-16, utf-32)")
        if len(body) > OFF_LOOP_BYTES:
            return await asyncio.to_thread(_decode_text, body, codec)
        return _decode_text(body, codec)
    if mtype == b"application/x-www-form-urlencoded":
        if body.lstrip()[:1] in (b"{", b"["):
            raise _bad_input(
                "the body looks like JSON but was sent as application/x-www-form-urlencoded (what `curl -d` sends "
                "by default): add the header `Content-Type: application/json` (curl: -H 'Content-Type: "
                "application/json')")
        try:
            return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False))
        except UnicodeDecodeError as err:
            raise _bad_input(f"form body is not valid UTF-8: {err}") from None
    if mtype == b"multipart/form-data":
        return await _decode_multipart(content_type, body)
    return body


def _decode_text(body: bytes, codec: str) -> str:
    try:
        return body.decode(codec)
    except UnicodeError as err:
        raise _bad_input(f"body is not valid {codec} text: {err}") from None


async def _decode_multipart(content_type: bytes, body: bytes) -> Any:
    from starlette.datastructures import Headers
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream():
        yield body

    headers = Headers(raw=[(b"content-type", content_type)])
    try:
        return await MultiPartParser(headers, stream()).parse()
    except (MultiPartException, ValueError, AssertionError) as err:
        raise _bad_input(f"malformed multipart form: {err}") from None


def _numpy_fallback(obj: Any) -> Any:
    """What orjson's numpy support leaves out: views and transposes (not C-contiguous), 0-d arrays, odd dtypes."""
    tolist = getattr(obj, "tolist", None)
    if tolist is not None and type(obj).__module__ == "numpy":
        return tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def encode(result: Any) -> tuple[bytes, bytes]:
    """Result -> (body, content type). Raises TypeError for what cannot be sent.

    NaN and ±Infinity (floats or numpy) become `null`: JSON has no such numbers, and a strict client would
    reject the tokens. The server logs a warning for such a result (see endpoint.py).
    """
    t = type(result)
    if t is not dict and t is not list:  # the common results skip the type checks below
        if isinstance(result, str):
            return result.encode("utf-8"), TEXT
        if isinstance(result, (bytes, bytearray, memoryview)):
            return bytes(result), OCTETS
    try:
        return orjson.dumps(result, option=_JSON_OPTS, default=_numpy_fallback), JSON
    except orjson.JSONEncodeError as err:
        raise TypeError(f"predict returned a {type(result).__name__}, which cannot be encoded: {err}") from None


def has_nonfinite(obj: Any, _depth: int = 0) -> bool:
    """Whether a result holds a NaN or an infinity anywhere (floats, numpy scalars and arrays)."""
    if _depth > 100:
        return False
    t = type(obj)
    if t is float:
        return not math.isfinite(obj)
    if t is dict:
        return any(has_nonfinite(v, _depth + 1) for v in obj.values())
    if t is list or t is tuple:
        return any(has_nonfinite(v, _depth + 1) for v in obj)
    if t.__module__ == "numpy":
        kind = getattr(getattr(obj, "dtype", None), "kind", "")
        if kind in ("f", "c"):
            import numpy

            return not bool(numpy.isfinite(obj).all())
        if kind == "O":
            return any(has_nonfinite(v, _depth + 1) for v in obj.ravel().tolist())
    return False
