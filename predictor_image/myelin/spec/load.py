"""Reading api.yaml files into typed specs: one parse per file, errors that name file and field."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import ValidationError

from ..contract import OPENAI_PREFIX, SPEC_ENV
from .asyncapi import AsyncApiSpec
from .fields import SpecError
from .protocols import protocols_of
from .realtime import ApiSpec
from .splitter import TrafficSplitterSpec, check_splitters, is_splitter

SPEC_FILE = "api.yaml"

#: `kind` in api.yaml -> the model that parses it. A new kind registers its model here.
KINDS: dict[str, type] = {"RealtimeAPI": ApiSpec, "AsyncAPI": AsyncApiSpec, "TrafficSplitter": TrafficSplitterSpec}


def _format_loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in ("function-after", "function-before") or str(item).startswith("function-"):
            continue
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def validation_problems(err: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for e in err.errors():
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see the api.yaml reference, docs/reference/api-yaml.md)"
        problems.append((_format_loc(tuple(e["loc"])), msg))
    return problems


def spec_from_dict(data: Any, source: str) -> ApiSpec:
    """Validate a mapping with the model of its `kind` (default RealtimeAPI)."""
    if not isinstance(data, Mapping):
        raise SpecError(source, [("", f"must be a mapping of fields, got {type(data).__name__}")])
    kind = data.get("kind", "RealtimeAPI")
    model = KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise SpecError(source, [("kind", f"unknown kind {kind!r}: use one of {', '.join(KINDS)}")])
    try:
        return model.model_validate(dict(data))
    except ValidationError as err:
        raise SpecError(source, validation_problems(err)) from None


def read_spec_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(str(path), [("", "file not found: every API folder needs an api.yaml")]) from None
    except UnicodeDecodeError as err:
        raise SpecError(str(path), [("", f"not valid UTF-8 text: {err}")]) from None
    except OSError as err:
        raise SpecError(str(path), [("", f"cannot be read: {err}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SpecError(str(path), [("", f"{where}invalid YAML: {getattr(err, 'problem', err)}")]) from None
    if data is None:
        raise SpecError(str(path), [("", "file is empty: at least `name` is required")])
    if not isinstance(data, dict):
        raise SpecError(str(path), [("", f"must be a mapping of fields, got {type(data).__name__}")])
    return data


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Overrides win; nested mappings merge key by key (so one field can be overridden alone)."""
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_api_spec(folder: str | Path, overrides: Mapping[str, Any] | None = None, overrides_source: str = "") -> ApiSpec:
    """Parse `<folder>/api.yaml`, optionally with per-stack overrides merged on top.

    Errors raise `SpecError` naming the file (and the overrides' source when they caused it).
    """
    folder = Path(folder)
    path = folder / SPEC_FILE
    data = read_spec_file(path)
    source = str(path)
    if overrides:
        data = deep_merge(data, overrides)
        source = f"{path} with overrides from {overrides_source or 'stack config'}"
    spec = spec_from_dict(data, source)
    check_predictor_file(folder, spec, source)
    return spec


def check_predictor_file(folder: Path, spec: ApiSpec, source: str) -> None:
    """The spec's predictor.path must name a file in the API folder (a TrafficSplitter has no predictor)."""
    if is_splitter(spec):
        return
    predictor_file = Path(folder) / spec.predictor.path
    if not predictor_file.is_file():
        raise SpecError(source, [("predictor.path", f"file not found: {predictor_file}")])


def misnamed_spec(folder: Path) -> str | None:
    """The error for an API folder whose spec file is `api.yml` (and no api.yaml), else None."""
    folder = Path(folder)
    if (folder / SPEC_FILE).is_file() or not (folder / "api.yml").is_file():
        return None
    return f"{folder / 'api.yml'}: the spec file must be named {SPEC_FILE} (did you mean {folder / SPEC_FILE}?)"


def discover_api_folders(root: str | Path) -> list[Path]:
    """Every direct sub-folder of `root` that holds an api.yaml, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise SpecError(str(root), [("", "APIs folder not found")])
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / SPEC_FILE).is_file())


def check_unique(specs: Mapping[Path, ApiSpec]) -> None:
    """Names and endpoints must be unique across APIs that are served together."""
    seen_names: dict[str, Path] = {}
    seen_endpoints: dict[str, Path] = {}
    for folder, spec in specs.items():
        if spec.name in seen_names:
            raise SpecError(
                str(folder / SPEC_FILE), [("name", f"{spec.name!r} is already used by {seen_names[spec.name]}")]
            )
        if spec.endpoint in seen_endpoints:
            raise SpecError(
                str(folder / SPEC_FILE),
                [("networking.endpoint", f"{spec.endpoint} is already served by {seen_endpoints[spec.endpoint]}")],
            )
        seen_names[spec.name] = folder
        seen_endpoints[spec.endpoint] = folder
    # An API serving openai answers under <endpoint>/v1/: no other API's endpoint may lie there.
    for folder, spec in specs.items():
        if "openai" not in protocols_of(spec):
            continue
        prefix = spec.endpoint + OPENAI_PREFIX
        for other_folder, other in specs.items():
            if other.endpoint == prefix or other.endpoint.startswith(prefix + "/"):
                raise SpecError(
                    str(other_folder / SPEC_FILE),
                    [("networking.endpoint", f"{other.endpoint} lies under {prefix}/, the OpenAI-compatible routes "
                      f"of {folder} (networking.protocols lists openai)")],
                )


def load_specs(paths: list[str]) -> tuple[dict[Path, ApiSpec], list[str]]:
    """Parse every API folder named (or every folder under each apis root); bad ones are reported, not fatal."""
    folders: list[Path] = []
    errors: list[str] = []
    for raw in paths:
        path = Path(raw)
        if (path / SPEC_FILE).is_file():
            folders.append(path)
            continue
        try:
            found = discover_api_folders(path)
        except SpecError as err:
            errors.append(str(err))
            continue
        # A sub-folder with an api.yml is an API with a misnamed spec (myelin local says so too), not nothing.
        misnamed = [m for m in (misnamed_spec(p) for p in sorted(path.iterdir()) if p.is_dir()) if m]
        errors.extend(misnamed)
        if not found and not misnamed:
            errors.append(f"{path}: no API folders (sub-folders with an api.yaml) found")
        folders.extend(found)
    specs: dict[Path, ApiSpec] = {}
    for folder in folders:
        try:
            spec = load_api_spec(folder)
            check_unique({**specs, folder: spec})
        except SpecError as err:
            errors.append(str(err))
            continue
        specs[folder] = spec
    # Splitters against the APIs served with them (names, kinds); a bad one is reported and left out.
    for folder, err in check_splitters(specs).items():
        errors.append(str(err))
        del specs[folder]
    return specs, errors


def resolve_spec(folder: Path, environ: Mapping[str, str] = os.environ) -> ApiSpec:
    """The effective spec: MYELIN_API_SPEC (JSON, set by the cluster after stack overrides) or api.yaml."""
    raw = environ.get(SPEC_ENV)
    if raw:
        import orjson

        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as err:
            raise SpecError(f"${SPEC_ENV}", [("", f"not valid JSON: {err}")]) from None
        spec = spec_from_dict(data, f"${SPEC_ENV}")
        check_predictor_file(folder, spec, f"${SPEC_ENV}")
        return spec
    return load_api_spec(folder)
