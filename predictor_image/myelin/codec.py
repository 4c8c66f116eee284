"""Request payload decoding by content type and result encoding by Python type."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson

from .errors import HTTPError

_JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS

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
        try:
            return body.decode(charset.decode("latin-1"))
        except (UnicodeError, LookupError) as err:
            raise _bad_input(f"body is not valid {charset.decode('latin-1')} text: {err}") from None
    if mtype == b"application/x-www-form-urlencoded":
        try:
            return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False))
        except UnicodeDecodeError as err:
            raise _bad_input(f"form body is not valid UTF-8: {err}") from None
    if mtype == b"multipart/form-data":
        return await _decode_multipart(content_type, body)
    return body


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


def encode(result: Any) -> tuple[bytes, bytes]:
    """Result -> (body, content type). Raises TypeError for what cannot be sent."""
    if isinstance(result, (dict, list)):
        return orjson.dumps(result, option=_JSON_OPTS), JSON
    if isinstance(result, str):
        return result.encode("utf-8"), TEXT
    if isinstance(result, (bytes, bytearray, memoryview)):
        return bytes(result), OCTETS
    try:
        return orjson.dumps(result, option=_JSON_OPTS), JSON
    except orjson.JSONEncodeError as err:
        raise TypeError(f"predict returned a {type(result).__name__}, which cannot be encoded: {err}") from None
