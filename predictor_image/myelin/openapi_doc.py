"""How an API's predict route is described in OpenAPI (`/openapi.json`, `/docs`), for `myelin serve` and
`myelin local` alike: the content types the runtime accepts, with an example from the API's `sample.*` file,
and Swagger UI served from an installed package (no CDN: `/docs` works offline)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .contract import DOCS_ASSETS_PATH
from .spec import ApiSpec

__all__ = ["DOCS_ASSETS_PATH", "operation", "request_body", "sample_file", "swagger_assets", "swagger_page"]

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
    """The POST on the API's endpoint: a prediction, or for an AsyncAPI the submit of a job (202 and its id)."""
    slug = spec.name.replace("-", "_")
    if spec.kind == "AsyncAPI":
        return {"summary": f"Submit a job to {spec.name}", "operationId": f"submit_{slug}",
                "requestBody": request_body(folder), "responses": ASYNC_SUBMIT_RESPONSES}
    return {"summary": f"Predict with {spec.name}", "operationId": f"predict_{slug}",
            "requestBody": request_body(folder), "responses": RESPONSES}


def paths(spec: ApiSpec, folder: Path, endpoint: str) -> dict[str, Any]:
    """Every route of the API for an OpenAPI document: its POST, and an AsyncAPI's `GET <endpoint>/{id}`."""
    documented = {endpoint: {"post": operation(spec, folder)}}
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
