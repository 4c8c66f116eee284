"""The Open Inference Protocol v2 (REST) over an ordinary predictor: `networking.protocols: [oip]`.

Routes (the model's name is the API's name; `/versions/<v>` is optional and must name `oip.version`):

- `GET /v2/health/live`, `GET /v2/health/ready`, `GET /v2`: the server's liveness, readiness and metadata
  (every Myelin server answers these, whatever its APIs speak; `myelin local`'s router answers them for all);
- `GET /v2/models/<name>`: the model's metadata, from the tensors declared in api.yaml (`oip:`);
- `GET /v2/models/<name>/ready`: 200 once the predictor is ready, else 503;
- `POST /v2/models/<name>/infer`: inference.

How an inference request reaches `predict`: the first dimension of every input is the request's rows. Row
`i` becomes one payload `{input name: that input's row i}`, with Python values (a number, a bool, a `str`
for BYTES that are UTF-8, else `bytes`; a list for a row of more dimensions): the payload a JSON client
would send to the native route. Each row's result is a dict `{output name: value}` (a bare value when one
output is declared); the values of all rows are stacked into each output tensor. A batched API gets the
rows of a request side by side in one `predict(list)` call, with the rows of other requests
(`Invoker.invoke_each`, batching along the first dimension); an API without batching gets one call per
row, in turn.

Requests are checked against the declared tensors (names, datatypes, ranks, fixed dimensions, element
counts and types); a mismatch is 400 `{"error": "<message>"}` (the protocol's error shape; the request id
is in `X-Request-ID`). The binary tensor data extension is supported both ways: inputs whose parameters
give `binary_data_size` are read from the bytes after the JSON header (`Inference-Header-Content-Length`
gives its length); outputs are sent as binary when the request's `binary_data_output` parameter, or an
output's `binary_data` parameter, asks for it (what `tritonclient.http` does by default).
"""

from __future__ import annotations

import math
import struct
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from . import __version__
from .errors import HTTPError, PredictorError
from .http_io import RequestHead, Send
from .endpoint import handle_predict
from .protocols import ProtocolError, check_access, extras
from .runtime import State
from .spec.protocols import DATATYPES

if TYPE_CHECKING:
    from .lifecycle import Ticket
    from .runtime import ApiRuntime
    from .spec.protocols import TensorSpec

SERVER_NAME = "myelin"
EXTENSIONS = ["binary_tensor_data"]
JSON = b"application/json"
OCTETS = b"application/octet-stream"
HEADER_LENGTH = b"inference-header-content-length"

#: Little-endian numpy dtypes of the fixed-size datatypes (binary data is little-endian, row major).
NUMPY = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
#: numpy kinds a JSON element may have for each datatype's kind (ints are fine for floats; bools only for BOOL).
_JSON_KINDS = {"b": "b", "u": "iu", "i": "iu", "f": "iuf"}


# ------------------------------------------------------------------------------------------- errors
def _body(message: str) -> bytes:
    return orjson.dumps({"error": message})


async def write_error(send: Send, status: int, error_type: str, message: str, request_id: str,
                      headers: list[tuple[bytes, bytes]] | None = None, param: str | None = None) -> None:
    """The protocol's error object, `{"error": "<message>"}`; the request id in X-Request-ID as everywhere."""
    body = _body(message)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", JSON), (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode("latin-1")), *(headers or []),
    ]})
    await send({"type": "http.response.body", "body": body})


def _bad(message: str) -> ProtocolError:
    return ProtocolError(400, "bad_request", message)


async def _json(send: Send, status: int, data: Any, request_id: str, headers: list | None = None) -> None:
    body = orjson.dumps(data)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", JSON), (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode("latin-1")), *(headers or []),
    ]})
    await send({"type": "http.response.body", "body": body})


# ------------------------------------------------------------------------------------------- tensors
def _dims(shape: Any, where: str) -> list[int]:
    if not isinstance(shape, list) or not shape or not all(type(d) is int and d >= 0 for d in shape):
        raise _bad(f"{where}: shape must be a non-empty list of non-negative integers, got {str(shape)[:80]}")
    return shape


def _check_shape(declared: "TensorSpec", shape: list[int], where: str) -> None:
    if len(shape) != len(declared.shape):
        raise _bad(f"{where}: shape {shape} has {len(shape)} dimensions; the model declares {declared.shape}")
    for i, (got, want) in enumerate(zip(shape, declared.shape)):
        if want != -1 and got != want:
            raise _bad(f"{where}: dimension {i} is {got}; the model declares {declared.shape}")


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if data and isinstance(data[0], list):
        out: list[Any] = []
        for part in data:
            out.extend(_flatten(part))
        return out
    return data


#: Python types a JSON element may have, by datatype kind (bool is not an int here).
_PY_TYPES = {"b": (bool,), "u": (int,), "i": (int,), "f": (int, float)}


def _rows_from_flat(declared: "TensorSpec", shape: list[int], data: Any) -> list[Any] | None:
    """The rows of a flat JSON list of plain numbers, without numpy (the common small request); None when the data
    needs the general path (nested, BYTES, FP16, more than two dimensions, a wrong count or element type)."""
    if type(data) is not list or len(shape) > 2 or declared.datatype in ("BYTES", "FP16"):
        return None
    dtype = NUMPY[declared.datatype]
    if len(data) != math.prod(shape):
        return None
    types = _PY_TYPES[dtype.kind]
    for value in data:
        if type(value) not in types:
            return None
    if dtype.kind in "iu" and data:
        info = np.iinfo(dtype)
        if min(data) < info.min or max(data) > info.max:
            return None
    if len(shape) == 1:
        return data
    k = shape[1]
    return [data[i:i + k] for i in range(0, len(data), k)]


def _from_json(declared: "TensorSpec", shape: list[int], data: Any, where: str) -> np.ndarray:
    """A JSON tensor (nested or flat, row major) as an array of `shape`, its elements checked against the datatype."""
    count = math.prod(shape)
    if declared.datatype == "BYTES":
        flat = _flatten(data)
        if len(flat) != count:
            raise _bad(f"{where}: {len(flat)} elements for shape {shape} ({count} expected)")
        if not all(isinstance(v, str) for v in flat):
            raise _bad(f"{where}: BYTES elements must be JSON strings (or send the tensor as binary data)")
        out = np.empty(count, dtype=object)
        out[:] = flat
        return out.reshape(shape)
    dtype = NUMPY[declared.datatype]
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError):
        raise _bad(f"{where}: data is not a regular array of numbers") from None
    if arr.size != count:
        raise _bad(f"{where}: {arr.size} elements for shape {shape} ({count} expected)")
    if arr.dtype.kind not in _JSON_KINDS[dtype.kind]:
        raise _bad(f"{where}: elements must be {_kind_word(dtype)} for datatype {declared.datatype}")
    if dtype.kind in "iu" and arr.size:
        info = np.iinfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise _bad(f"{where}: a value is out of range for {declared.datatype} ({info.min} to {info.max})")
    # Numbers reach predict as the JSON carried them (floats as doubles): the same payload as the native route's.
    return arr.astype(np.float64 if dtype.kind == "f" else dtype, copy=False).reshape(shape)


def _kind_word(dtype: np.dtype) -> str:
    return {"b": "JSON booleans", "u": "JSON integers", "i": "JSON integers", "f": "JSON numbers"}[dtype.kind]


def _from_binary(declared: "TensorSpec", shape: list[int], raw: memoryview, where: str) -> np.ndarray:
    count = math.prod(shape)
    if declared.datatype == "BYTES":
        items: list[Any] = []
        at = 0
        while at < len(raw):
            if at + 4 > len(raw):
                raise _bad(f"{where}: binary BYTES data ends inside an element's 4-byte length")
            (size,) = struct.unpack_from("<I", raw, at)
            at += 4
            if at + size > len(raw):
                raise _bad(f"{where}: binary BYTES element of {size} bytes runs past binary_data_size")
            items.append(bytes(raw[at:at + size]))
            at += size
        if len(items) != count:
            raise _bad(f"{where}: {len(items)} BYTES elements for shape {shape} ({count} expected)")
        out = np.empty(count, dtype=object)
        out[:] = [_text(v) for v in items]
        return out.reshape(shape)
    dtype = NUMPY[declared.datatype]
    if len(raw) != count * dtype.itemsize:
        raise _bad(f"{where}: binary_data_size {len(raw)} does not hold shape {shape} of {declared.datatype} "
                   f"({count * dtype.itemsize} bytes)")
    if dtype.kind == "b":
        arr = np.frombuffer(raw, dtype=np.uint8)
        if arr.size and arr.max() > 1:
            raise _bad(f"{where}: BOOL elements are single bytes 0 or 1")
        return arr.astype(bool).reshape(shape)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _text(value: bytes) -> str | bytes:
    """A BYTES element as the predictor sees it: str when it is UTF-8 text (as JSON would carry it), else bytes."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value


def _serialize_bytes(flat: list[Any], where: str) -> bytes:
    parts = []
    for value in flat:
        if isinstance(value, str):
            value = value.encode("utf-8")
        elif not isinstance(value, (bytes, bytearray)):
            value = str(value).encode("utf-8")
        parts.append(struct.pack("<I", len(value)))
        parts.append(bytes(value))
    return b"".join(parts)


# ------------------------------------------------------------------------------------------- the model
class OipModel:
    """One API served as an OIP model: its declared tensors, metadata and the infer route."""

    def __init__(self, runtime: "ApiRuntime"):
        spec = runtime.spec.oip
        self.runtime = runtime
        self.name = runtime.spec.name
        self.version = spec.version
        self.inputs = {t.name: t for t in spec.inputs}
        self.outputs = {t.name: t for t in spec.outputs}
        self.output_order = [t.name for t in spec.outputs]
        self.metadata = orjson.dumps({
            "name": self.name, "versions": [self.version], "platform": spec.platform,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in spec.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in spec.outputs],
        })

    # ------------------------------------------------------------------ routes
    def check_version(self, version: str | None) -> None:
        if version is not None and version != self.version:
            raise ProtocolError(404, "not_found", f"model {self.name} has no version {version[:64]!r} "
                                f"(versions: {self.version})")

    async def get_metadata(self, scope: dict, receive: Any, send: Send, version: str | None) -> None:
        await self._small(scope, send, version, lambda: (200, self.metadata))

    async def get_ready(self, scope: dict, receive: Any, send: Send, version: str | None) -> None:
        def answer() -> tuple[int, bytes]:
            ready = self.runtime.state is State.READY and not self.runtime.wedged
            return (200 if ready else 503), orjson.dumps({"name": self.name, "ready": ready})

        await self._small(scope, send, version, answer)

    async def _small(self, scope: dict, send: Send, version: str | None, answer: Any) -> None:
        runtime = self.runtime
        keys = runtime.api_keys
        head = RequestHead(scope["headers"], keys.header if keys is not None else b"")
        try:
            check_access(runtime, head)
            self.check_version(version)
        except HTTPError as err:
            await write_error(send, err.status_code, err.error_type, err.message, head.request_id, err.headers)
            return
        status, body = answer()
        headers = [(b"retry-after", b"1")] if status == 503 else []
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", JSON), (b"content-length", str(len(body)).encode()),
            (b"x-request-id", head.request_id.encode("latin-1")), *headers]})
        await send({"type": "http.response.body", "body": body})

    async def infer(self, scope: dict, receive: Any, send: Send, version: str | None) -> None:
        async def work(runtime: "ApiRuntime", scope: dict, receive: Any, send: Send, head: RequestHead,
                       ticket: "Ticket") -> tuple[int, str | None]:
            self.check_version(version)
            body = await ticket.read_body(receive, runtime.max_body)
            request = self.parse(scope, body)
            results = await runtime.invoker.invoke_each(request.rows, extras(runtime, scope), ticket)
            for i, result in enumerate(results):  # a batched predict's per-row error fails the request
                if isinstance(result, PredictorError):
                    raise PredictorError(result.status_code, f"row {i}: {result.message}", result.error_type)
            payload, headers = self.encode(request, results, head.request_id)
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
            return 200, None

        await handle_predict(self.runtime, scope, receive, send, work, write_error)

    # ------------------------------------------------------------------ decoding
    def parse(self, scope: dict, body: bytes) -> "InferRequest":
        header_length = None
        for key, value in scope["headers"]:
            if key == HEADER_LENGTH:
                try:
                    header_length = int(value)
                except ValueError:
                    raise _bad("Inference-Header-Content-Length is not a number") from None
            elif key == b"content-encoding" and value.strip().lower() not in (b"identity", b""):
                raise ProtocolError(415, "unsupported_media_type", "compressed request bodies (Content-Encoding) "
                                    "are not supported; send the request uncompressed")
        if header_length is None:
            header, binary = body, memoryview(b"")
        else:
            if not 0 < header_length <= len(body):
                raise _bad(f"Inference-Header-Content-Length {header_length} is outside the body "
                           f"({len(body)} bytes)")
            header, binary = body[:header_length], memoryview(body)[header_length:]
        try:
            doc = orjson.loads(header)
        except orjson.JSONDecodeError as err:
            raise _bad(f"the inference request is not valid JSON: {err}") from None
        if not isinstance(doc, dict):
            raise _bad("the inference request must be a JSON object with `inputs`")
        params = doc.get("parameters") or {}
        if not isinstance(params, dict):
            raise _bad("parameters must be a JSON object")
        request_id = doc.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise _bad("id must be a string")
        inputs = doc.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise _bad(f"inputs must be a non-empty list; model {self.name} takes {', '.join(self.inputs)}")
        columns: dict[str, list[Any]] = {}
        offset = 0
        rows = None
        for i, entry in enumerate(inputs):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise _bad(f"inputs[{i}] must be an object with a name")
            name = entry["name"]
            where = f"input {name!r}"
            declared = self.inputs.get(name)
            if declared is None:
                raise _bad(f"model {self.name} has no input {name[:64]!r} (inputs: {', '.join(self.inputs)})")
            if name in columns:
                raise _bad(f"{where} is given twice")
            if entry.get("datatype") != declared.datatype:
                raise _bad(f"{where}: datatype {str(entry.get('datatype'))[:16]!r}; the model declares "
                           f"{declared.datatype}")
            shape = _dims(entry.get("shape"), where)
            _check_shape(declared, shape, where)
            entry_params = entry.get("parameters") or {}
            if not isinstance(entry_params, dict):
                raise _bad(f"{where}: parameters must be a JSON object")
            size = entry_params.get("binary_data_size")
            if size is not None:
                if type(size) is not int or size < 0 or offset + size > len(binary):
                    raise _bad(f"{where}: binary_data_size {str(size)[:20]} runs past the binary data after the "
                               f"JSON header ({len(binary) - offset} bytes left)")
                columns[name] = _from_binary(declared, shape, binary[offset:offset + size], where).tolist()
                offset += size
            else:
                if "data" not in entry:
                    raise _bad(f"{where}: no data (give `data`, or binary_data_size with the binary extension)")
                rows_of = _rows_from_flat(declared, shape, entry["data"])
                columns[name] = (rows_of if rows_of is not None
                                 else _from_json(declared, shape, entry["data"], where).tolist())
            if rows is None:
                rows = shape[0]
            elif shape[0] != rows:
                raise _bad(f"{where}: {shape[0]} rows (first dimension); other inputs have {rows}")
        if offset != len(binary):
            raise _bad(f"{len(binary) - offset} bytes of binary data after the JSON header belong to no input "
                       "(binary_data_size)")
        missing = [name for name in self.inputs if name not in columns]
        if missing:
            raise _bad(f"missing input(s) {', '.join(missing)}; model {self.name} takes {', '.join(self.inputs)}")
        if not rows:
            raise _bad("the first dimension (rows) is 0: nothing to infer")
        binary_default = params.get("binary_data_output") is True
        wanted = doc.get("outputs")
        outputs: list[tuple[str, bool]] = []
        if wanted is None:
            outputs = [(name, binary_default) for name in self.output_order]
        else:
            if not isinstance(wanted, list):
                raise _bad("outputs must be a list of {name, parameters}")
            for j, out in enumerate(wanted):
                if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                    raise _bad(f"outputs[{j}] must be an object with a name")
                if out["name"] not in self.outputs:
                    raise _bad(f"model {self.name} has no output {out['name'][:64]!r} (outputs: "
                               f"{', '.join(self.outputs)})")
                out_params = out.get("parameters") or {}
                binary = out_params.get("binary_data") if isinstance(out_params, dict) else None
                outputs.append((out["name"], binary_default if binary is None else binary is True))
        names = list(columns)
        if len(names) == 1:
            (name,) = names
            payloads = [{name: value} for value in columns[name]]
        else:
            payloads = [dict(zip(names, values)) for values in zip(*(columns[n] for n in names))]
        return InferRequest(request_id, payloads, outputs)

    # ------------------------------------------------------------------ encoding
    def encode(self, request: "InferRequest", results: list[Any], request_id: str
               ) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        single = len(self.outputs) == 1
        outputs = []
        chunks: list[bytes] = []
        for name, binary in request.outputs:
            declared = self.outputs[name]
            values = []
            for i, result in enumerate(results):
                if isinstance(result, dict):
                    if name not in result:
                        raise HTTPError(500, "internal", f"the result of row {i} has no {name!r} (oip.outputs); "
                                        f"it has {', '.join(map(str, list(result)[:8]))}")
                    values.append(result[name])
                elif single:
                    values.append(result)
                else:
                    raise HTTPError(500, "internal", f"predict returned a {type(result).__name__} for row {i}; with "
                                    f"oip.outputs {', '.join(self.outputs)} it must return a dict of them")
            if not binary and len(declared.shape) == 1 and declared.datatype not in ("BYTES", "FP16"):
                kind = NUMPY[declared.datatype].kind
                types = _PY_TYPES[kind]
                if all(type(v) in types for v in values) and (
                        kind not in "iu" or _in_range(values, NUMPY[declared.datatype])):
                    # One scalar per row, plain Python numbers of the right kind: sent as they are, no numpy.
                    outputs.append({"name": name, "datatype": declared.datatype, "shape": [len(values)],
                                    "data": values})
                    continue
            arr = self._stack(declared, values, len(results))
            entry: dict[str, Any] = {"name": name, "datatype": declared.datatype, "shape": list(arr.shape)}
            if binary:
                raw = (_serialize_bytes(arr.ravel().tolist(), name) if declared.datatype == "BYTES"
                       else np.ascontiguousarray(arr, dtype=NUMPY[declared.datatype]).tobytes())
                entry["parameters"] = {"binary_data_size": len(raw)}
                chunks.append(raw)
            else:
                entry["data"] = self._json_data(declared, arr, name)
            outputs.append(entry)
        response: dict[str, Any] = {"model_name": self.name, "model_version": self.version}
        if request.id is not None:
            response["id"] = request.id
        response["outputs"] = outputs
        header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
        rid = (b"x-request-id", request_id.encode("latin-1"))
        if not chunks:
            return header, [(b"content-type", JSON), (b"content-length", str(len(header)).encode()), rid]
        body = header + b"".join(chunks)
        return body, [(b"content-type", OCTETS), (b"content-length", str(len(body)).encode()),
                      (HEADER_LENGTH, str(len(header)).encode()), rid]

    def _stack(self, declared: "TensorSpec", values: list[Any], rows: int) -> np.ndarray:
        name = declared.name
        try:
            if declared.datatype == "BYTES" and len(declared.shape) == 1:
                arr = np.empty(rows, dtype=object)  # each row one element, whatever it is (np.array would split a str)
                arr[:] = values
            elif declared.datatype == "BYTES":
                arr = np.array(values, dtype=object)
            else:
                arr = np.asarray(values, dtype=NUMPY[declared.datatype])
        except (ValueError, TypeError) as err:
            raise HTTPError(500, "internal", f"output {name!r}: the rows' values do not make a "
                            f"{declared.datatype} tensor of shape {declared.shape}: {err}") from None
        try:
            _check_shape(declared, list(arr.shape), f"output {name!r}")
        except HTTPError as err:
            raise HTTPError(500, "internal", f"{err.message} (the predictor's results do not match oip.outputs)"
                            ) from None
        return arr

    def _json_data(self, declared: "TensorSpec", arr: np.ndarray, name: str) -> Any:
        flat = arr.ravel()
        if declared.datatype == "BYTES":
            out = []
            for value in flat.tolist():
                if isinstance(value, (bytes, bytearray)):
                    try:
                        value = bytes(value).decode("utf-8")
                    except UnicodeDecodeError:
                        raise HTTPError(500, "internal", f"output {name!r} holds bytes that are not UTF-8 text: ask "
                                        "for it as binary data (binary_data)") from None
                elif not isinstance(value, str):
                    value = str(value)
                out.append(value)
            return out
        if declared.datatype == "FP16":
            return flat.tolist()
        return flat


def _in_range(values: list[int], dtype: np.dtype) -> bool:
    info = np.iinfo(dtype)
    return info.min <= min(values) and max(values) <= info.max


class InferRequest:
    __slots__ = ("id", "rows", "outputs")

    def __init__(self, request_id: str | None, rows: list[dict[str, Any]], outputs: list[tuple[str, bool]]):
        self.id = request_id
        self.rows = rows
        self.outputs = outputs  # (name, as binary data)


# ------------------------------------------------------------------------------------------- routing
def model_route(models: dict[str, OipModel], method: str, rest: str) -> Any:
    """`<name>[/versions/<v>][/ready|/infer]` (the path after /v2/models/) -> a handler, or None (404)."""
    parts = rest.split("/")
    model = models.get(parts[0])
    if model is None:
        return None
    version = None
    tail = parts[1:]
    if len(tail) >= 2 and tail[0] == "versions":
        version = tail[1]
        tail = tail[2:]
    if not tail:
        action, allowed = model.get_metadata, "GET"
    elif tail == ["ready"]:
        action, allowed = model.get_ready, "GET"
    elif tail == ["infer"]:
        action, allowed = model.infer, "POST"
    else:
        return None
    if method != allowed:
        return _not_allowed(method, allowed)

    async def handle(scope: dict, receive: Any, send: Send) -> None:
        await action(scope, receive, send, version)

    return handle


def _not_allowed(method: str, allowed: str) -> Any:
    async def handle(scope: dict, receive: Any, send: Send) -> None:
        head = RequestHead(scope["headers"])
        await write_error(send, 405, "method_not_allowed", f"{method} is not allowed on {scope['path'][:200]}",
                          head.request_id, [(b"allow", allowed.encode())])

    return handle


async def not_found(scope: dict, receive: Any, send: Send) -> None:
    """A path under /v2 that names no route or no model of this server: 404 in the protocol's shape."""
    path = scope["path"][:200].encode("ascii", "backslashreplace").decode("ascii")
    await write_error(send, 404, "not_found", f"no route or model at {path}", RequestHead(scope["headers"]).request_id)


class ServerRoutes:
    """`/v2`, `/v2/health/live`, `/v2/health/ready`: answered for the whole server (`server` is the MyelinApp, or
    anything with `.ready` and `.stuck_too_long()`)."""

    def __init__(self, server: Any):
        self.server = server

    def match(self, method: str, path: str) -> Any:
        if path == "/v2/health/live":
            action = self.live
        elif path == "/v2/health/ready":
            action = self.ready
        elif path in ("/v2", "/v2/"):
            action = self.metadata
        else:
            return None
        if method != "GET":
            return _not_allowed(method, "GET")
        return action

    async def live(self, scope: dict, receive: Any, send: Send) -> None:
        live = self.server.stuck_too_long() is None
        await _json(send, 200 if live else 503, {"live": live}, RequestHead(scope["headers"]).request_id)

    async def ready(self, scope: dict, receive: Any, send: Send) -> None:
        ready = bool(self.server.ready)
        await _json(send, 200 if ready else 503, {"ready": ready}, RequestHead(scope["headers"]).request_id,
                    None if ready else [(b"retry-after", b"1")])

    async def metadata(self, scope: dict, receive: Any, send: Send) -> None:
        await _json(send, 200, server_metadata(), RequestHead(scope["headers"]).request_id)


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}
