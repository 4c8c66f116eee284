"""How an API's predict route is described in OpenAPI (`/openapi.json`, `/docs`), for `myelin serve` and
`myelin local` alike: the content types the runtime accepts, with an example from the API's `sample.*` file,
and Swagger UI served from an installed package (no CDN: `/docs` works offline)."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

from .contract import DOCS_ASSETS_PATH
from .spec import ApiSpec

__all__ = ["DOCS_ASSETS_PATH", "operation", "request_body", "sample_file", "streams", "swagger_assets",
           "swagger_page"]

_SAMPLE_TYPES = {".json": "application/json", ".txt": "text/plain", ".png": "image/png", ".jpg": "image/jpeg",
                 ".jpeg": "image/jpeg", ".csv": "text/csv", ".wav": "audio/wav"}
ACCEPTED = ("application/json", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
            "application/octet-stream")


def sample_file(folder: Path) -> Path | None:
    """The API's sample payload: the first `sample.*` file in its folder (the local page sends it)."""
    found = sorted(p for p in Path(folder).glob("sample.*") if p.is_file())
    return found[0] if found else None


def sample_media_type(path: Path) -> str:
    return _SAMPLE_TYPES.get(path.suffix.lower(), "application/octet-stream")


def _schema(media_type: str) -> dict[str, Any]:
    if media_type == "application/json":
        return {}
    if media_type.startswith("text/"):
        return {"type": "string"}
    if media_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return {"type": "object", "additionalProperties": True}
    return {"type": "string", "format": "binary"}


def request_body(folder: Path) -> dict[str, Any]:
    """Every content type the runtime decodes, the sample's first and with the sample as its example."""
    sample = sample_file(folder)
    content: dict[str, Any] = {}
    if sample is not None:
        media = sample_media_type(sample)
        entry: dict[str, Any] = {"schema": _schema(media)}
        if media == "application/json":
            try:
                entry["example"] = json.loads(sample.read_text(encoding="utf-8"))
            except (ValueError, OSError):
                pass
        elif media.startswith("text/"):
            try:
                entry["example"] = sample.read_text(encoding="utf-8")
            except (UnicodeError, OSError):
                pass
        content[media] = entry
    for media in ACCEPTED:
        content.setdefault(media, {"schema": _schema(media)})
    return {"required": True, "content": content}


RESPONSES = {
    "200": {"description": "The prediction (JSON, text or bytes, as the predictor returns it)"},
    "400": {"description": "Malformed input"}, "401": {"description": "Missing or invalid API key"},
    "413": {"description": "Body too large"}, "415": {"description": "Unsupported charset"},
    "500": {"description": "Predictor failure"}, "503": {"description": "Overloaded, loading or draining"},
    "504": {"description": "Timed out"},
}


#: A `predict` that yields (streaming.py): 200 with the items as they come, NDJSON or Server-Sent Events by `Accept`.
STREAM_RESPONSES = {
    **RESPONSES,
    "200": {"description": "A stream of the predictor's items, each sent as it is produced: NDJSON "
                           "(`application/x-ndjson`, one JSON value per line) by default, or Server-Sent Events "
                           "(`text/event-stream`, one `data:` event per item) when the request's `Accept` asks for "
                           "them. An error after the first item ends the stream with an error item (NDJSON: a last "
                           "`{\"error\": ...}` line; SSE: `event: error`); before it, the error statuses below.",
            "content": {"application/x-ndjson": {"schema": {"type": "string"}},
                        "text/event-stream": {"schema": {"type": "string"}}}},
}


def _yields(function: ast.AST) -> bool:
    """Whether a function's own body yields (a yield inside a nested function or class is not its own)."""
    stack = list(ast.iter_child_nodes(function))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Yield, ast.YieldFrom)):
            return True
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(node))
    return False


def streams(spec: ApiSpec, folder: Path) -> bool:
    """Whether the predictor class's `predict` is a generator (it streams), read from its source without importing
    it (the `myelin local` router never imports predictors). A `predict` it cannot find there (inherited, assigned)
    is documented as a plain prediction."""
    try:
        tree = ast.parse((Path(folder) / spec.predictor.path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeError, ValueError):
        return False
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == spec.predictor.class_name:
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name == "predict":
                    return _yields(item)
    return False


_JOB_STATUSES = ["in_queue", "in_progress", "completed", "failed"]
ASYNC_SUBMIT_RESPONSES = {
    "202": {"description": "The job is stored; poll `GET <endpoint>/{id}` (the Location header) for its result",
            "headers": {"Location": {"description": "`<endpoint>/<id>`: where the job's status is",
                                     "schema": {"type": "string"}}},
            "content": {"application/json": {"schema": {"type": "object", "required": ["id"],
                                                        "properties": {"id": {"type": "string"}}}}}},
    "400": RESPONSES["400"], "401": RESPONSES["401"], "413": RESPONSES["413"], "415": RESPONSES["415"],
    "503": {"description": "Job store full (jobs.max_queued, jobs.max_stored_bytes), loading or draining"},
}
JOB_RESPONSES = {
    "200": {"description": "The job's status, and its result or error once it has finished",
            "content": {"application/json": {"schema": {
                "type": "object", "required": ["id", "status", "created_at"],
                "properties": {"id": {"type": "string"}, "status": {"type": "string", "enum": _JOB_STATUSES},
                               "created_at": {"type": "string"}, "started_at": {"type": "string"},
                               "finished_at": {"type": "string"}, "result": {},
                               "result_encoding": {"type": "string", "enum": ["base64"]},
                               "error": {"type": "object"}}}}}},
    "401": RESPONSES["401"],
    "404": {"description": "No such job, or past jobs.retention"},
}


def operation(spec: ApiSpec, folder: Path) -> dict[str, Any]:
    """The POST on the API's endpoint: a prediction (a stream of items for a `predict` that yields), or for an
    AsyncAPI the submit of a job (202 and its id)."""
    slug = spec.name.replace("-", "_")
    if spec.kind == "AsyncAPI":
        return {"summary": f"Submit a job to {spec.name}", "operationId": f"submit_{slug}",
                "requestBody": request_body(folder), "responses": ASYNC_SUBMIT_RESPONSES}
    if streams(spec, folder):
        return {"summary": f"Predict with {spec.name}: a stream of items (NDJSON or Server-Sent Events)",
                "operationId": f"predict_{slug}", "requestBody": request_body(folder), "responses": STREAM_RESPONSES}
    return {"summary": f"Predict with {spec.name}", "operationId": f"predict_{slug}",
            "requestBody": request_body(folder), "responses": RESPONSES}


_JSON_BODY = {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
_PROTOCOL_ERRORS = {"400": RESPONSES["400"], "401": RESPONSES["401"], "404": {"description": "Unknown model"},
                    "500": RESPONSES["500"], "503": RESPONSES["503"], "504": RESPONSES["504"]}
_OPENAI_ROUTES = {
    "chat": ("chat/completions", "Chat completion", "a chat.completion, or with `stream: true` `data:` chunks "
             "(text/event-stream) ending with `data: [DONE]`"),
    "completions": ("completions", "Text completion", "a text_completion, or with `stream: true` `data:` chunks "
                    "(text/event-stream) ending with `data: [DONE]`"),
    "embeddings": ("embeddings", "Embeddings", "a list of embeddings, one per input"),
}


def protocol_paths(spec: Any, endpoint: str) -> dict[str, Any]:
    """The routes of the protocols an API speaks besides its own (protocols.py): OpenAI's under `<endpoint>/v1`,
    the Open Inference Protocol's under `/v2/models/<name>`. Errors follow each protocol's own shape."""
    from .spec.protocols import protocols_of

    protocols = protocols_of(spec)
    slug = spec.name.replace("-", "_")
    documented: dict[str, Any] = {}
    if "openai" in protocols:
        base = f"{endpoint}/v1"
        for route in getattr(spec, "openai_routes", []):
            path, summary, answer = _OPENAI_ROUTES[route]
            documented[f"{base}/{path}"] = {"post": {
                "summary": f"OpenAI-compatible: {summary} with {spec.name} (`model`: \"{spec.name}\")",
                "operationId": f"openai_{route}_{slug}", "requestBody": _JSON_BODY,
                "responses": {"200": {"description": answer}, **_PROTOCOL_ERRORS}}}
        documented[f"{base}/models"] = {"get": {
            "summary": f"OpenAI-compatible: the model list ({spec.name})", "operationId": f"openai_models_{slug}",
            "responses": {"200": {"description": "`{\"object\": \"list\", \"data\": [model]}`"}}}}
    if "oip" in protocols:
        model = f"/v2/models/{spec.name}"
        documented[model] = {"get": {
            "summary": f"Open Inference Protocol: {spec.name}'s metadata (its tensors)",
            "operationId": f"oip_metadata_{slug}", "responses": {"200": {"description": "name, versions, "
                                                                         "platform, inputs and outputs"}}}}
        documented[f"{model}/ready"] = {"get": {
            "summary": f"Open Inference Protocol: whether {spec.name} is ready", "operationId": f"oip_ready_{slug}",
            "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}}
        documented[f"{model}/infer"] = {"post": {
            "summary": f"Open Inference Protocol: inference with {spec.name} (rows along the first dimension)",
            "operationId": f"oip_infer_{slug}",
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {"type": "object", "required": ["inputs"]}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                             "description": "binary tensor data: a JSON header of "
                                                            "Inference-Header-Content-Length bytes, then the tensors"}}},
            "responses": {"200": {"description": "the outputs (JSON, or binary tensor data when asked for)"},
                          **_PROTOCOL_ERRORS}}}
    return documented


def paths(spec: ApiSpec, folder: Path, endpoint: str) -> dict[str, Any]:
    """Every route of the API for an OpenAPI document: its POST (when it speaks `myelin`), an AsyncAPI's
    `GET <endpoint>/{id}`, and the routes of the other protocols it speaks."""
    from .spec.protocols import protocols_of

    documented = protocol_paths(spec, endpoint)
    if "myelin" in protocols_of(spec):
        documented[endpoint] = {"post": operation(spec, folder)}
    if spec.kind == "AsyncAPI":
        documented[f"{endpoint}/{{id}}"] = {"get": {
            "summary": f"A job of {spec.name}: its status, then its result",
            "operationId": f"job_{spec.name.replace('-', '_')}",
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
                            "description": "the id the submit answered"}],
            "responses": JOB_RESPONSES}}
    return documented


def swagger_assets() -> Path:
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def swagger_page(openapi_url: str, title: str) -> Any:
    from fastapi.openapi.docs import get_swagger_ui_html

    return get_swagger_ui_html(
        openapi_url=openapi_url, title=title,
        swagger_js_url=f"{DOCS_ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_ASSETS_PATH}/favicon.png",
    )
