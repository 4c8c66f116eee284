"""Import a predictor class from an API folder and describe how to call it."""

from __future__ import annotations

import contextlib
import enum
import importlib.util
import inspect
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .spec import ApiSpec

_generation = 0


class LoadError(Exception):
    """A predictor that could not be imported or constructed: says which file and line."""

    def __init__(self, api: str, where: str, message: str, detail: str = ""):
        self.api = api
        self.where = where
        self.message = message
        self.detail = detail
        super().__init__(f"{where}: {message}" if where else message)


class CallKind(enum.Enum):
    """How `predict` is called, decided once at load."""

    SYNC = "sync"  # def predict: runs in the API's thread pool
    ASYNC = "async"  # async def predict: awaited on the event loop
    SYNC_GENERATOR = "sync_generator"  # def predict(...): yield ...
    ASYNC_GENERATOR = "async_generator"  # async def predict(...): yield ...


def call_kind(predict: Any) -> CallKind:
    if inspect.isasyncgenfunction(predict):
        return CallKind.ASYNC_GENERATOR
    if inspect.isgeneratorfunction(predict):
        return CallKind.SYNC_GENERATOR
    if inspect.iscoroutinefunction(predict):
        return CallKind.ASYNC
    return CallKind.SYNC


@dataclass
class Predictor:
    instance: Any
    predict: Any
    kind: CallKind
    wants_query_params: bool
    wants_headers: bool

    @property
    def is_async(self) -> bool:
        return self.kind is CallKind.ASYNC


def _where(err: BaseException, folder: Path) -> str:
    """The innermost traceback frame inside the API folder, as 'file, line N'."""
    folder = folder.resolve()
    found = ""
    for frame in traceback.extract_tb(err.__traceback__):
        try:
            path = Path(frame.filename).resolve()
        except (OSError, ValueError):
            continue
        if path.is_relative_to(folder):
            found = f"{path}, line {frame.lineno}"
    if not found and isinstance(err, SyntaxError) and err.filename:
        found = f"{err.filename}, line {err.lineno}"
    return found


def _install_hint(err: BaseException, folder: Path) -> str:
    if isinstance(err, ModuleNotFoundError) and (folder / "requirements.txt").is_file():
        return f" (install the API's dependencies: pip install -r {folder / 'requirements.txt'})"
    return ""


def _forget_modules_from(folder: Path) -> None:
    """Drop modules imported from the API folder so a reload sees edited helper modules."""
    folder = folder.resolve()
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file:
            try:
                if Path(file).resolve().is_relative_to(folder):
                    del sys.modules[name]
            except (OSError, ValueError):
                continue


@contextlib.contextmanager
def _importable(folder: Path) -> Iterator[None]:
    """Sibling modules in the API folder are importable while the predictor is imported and constructed."""
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        try:
            sys.path.remove(str(folder))
        except ValueError:
            pass


def import_predictor_class(folder: Path, spec: ApiSpec) -> type:
    """Import `spec.predictor.path` and return the predictor class (nothing is constructed)."""
    global _generation
    folder = Path(folder).resolve()
    file = folder / spec.predictor.path
    os.environ.update(spec.predictor.env)
    _forget_modules_from(folder)
    _generation += 1
    module_name = f"myelin_api_{spec.name.replace('-', '_')}_{_generation}"
    try:
        with _importable(folder):
            module_spec = importlib.util.spec_from_file_location(module_name, file)
            if module_spec is None or module_spec.loader is None:
                raise LoadError(spec.name, str(file), "cannot import this file")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module
            module_spec.loader.exec_module(module)
    except LoadError:
        raise
    except BaseException as err:  # noqa: BLE001 - report any import failure with its location
        if isinstance(err, KeyboardInterrupt):
            raise
        message = f"import failed: {type(err).__name__}: {err}" + _install_hint(err, folder)
        raise LoadError(spec.name, _where(err, folder) or str(file), message, traceback.format_exc()) from None
    cls = getattr(module, spec.predictor.class_name, None)
    if cls is None or not inspect.isclass(cls):
        raise LoadError(spec.name, str(file), f"no class named {spec.predictor.class_name!r} (predictor.class_name)")
    predict = getattr(cls, "predict", None)
    if predict is None or not callable(predict):
        raise LoadError(spec.name, str(file), f"class {spec.predictor.class_name} has no predict(self, payload) method")
    return cls


def init_kwargs(cls: type, spec: ApiSpec, folder: Path, model_dir: Path | None) -> dict[str, Any]:
    """What `__init__` gets besides `config`: each extra is passed only when `__init__` declares it.

    - `model_dir`: the local folder holding the files of `predictor.model_uri` (a str path).
    """
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # a class whose signature cannot be read: only config
        return {}
    accepts_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs: dict[str, Any] = {}
    declared = params.get("model_dir")
    if model_dir is not None and (declared is not None or accepts_kwargs):
        kwargs["model_dir"] = str(model_dir)
    elif model_dir is None and declared is not None and declared.default is inspect.Parameter.empty:
        raise LoadError(spec.name, str(folder / spec.predictor.path),
                        f"{spec.predictor.class_name}.__init__ declares model_dir, but api.yaml sets no "
                        "predictor.model_uri (the model files to put there)")
    return kwargs


def load_predictor(folder: Path, spec: ApiSpec, model_dir: Path | None = None) -> Predictor:
    """Import the predictor class and construct it with `spec.predictor.config` (and `model_dir` if declared)."""
    folder = Path(folder).resolve()
    cls = import_predictor_class(folder, spec)
    extra = init_kwargs(cls, spec, folder, model_dir)
    try:
        with _importable(folder):  # __init__ may import sibling modules lazily
            instance = cls(dict(spec.predictor.config), **extra)
    except BaseException as err:  # noqa: BLE001
        if isinstance(err, KeyboardInterrupt):
            raise
        raise LoadError(
            spec.name, _where(err, folder) or str(folder / spec.predictor.path),
            f"{spec.predictor.class_name}.__init__ failed: {type(err).__name__}: {err}" + _install_hint(err, folder),
            traceback.format_exc(),
        ) from None
    bound = instance.predict
    params = inspect.signature(bound).parameters
    accepts_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return Predictor(
        instance=instance,
        predict=bound,
        kind=call_kind(bound),
        wants_query_params="query_params" in params or accepts_kwargs,
        wants_headers="headers" in params or accepts_kwargs,
    )
