"""Import a predictor class from an API folder and describe how to call it."""

from __future__ import annotations

import contextlib
import enum
import importlib.util
import inspect
import os
import shlex
import sys
import traceback
from dataclasses import dataclass, field
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


#: The call kinds whose results are streamed item by item (see streaming.py).
STREAMING_KINDS = frozenset({CallKind.SYNC_GENERATOR, CallKind.ASYNC_GENERATOR})


@dataclass
class Predictor:
    instance: Any
    predict: Any
    kind: CallKind
    wants_query_params: bool
    wants_headers: bool
    #: A generator predict: its items are streamed (read on the hot path, so a plain attribute).
    streams: bool = field(init=False)

    def __post_init__(self) -> None:
        self.streams = self.kind in STREAMING_KINDS

    @property
    def is_async(self) -> bool:
        return self.kind is CallKind.ASYNC


_SELF = object()  # stands for `self` when binding a plain method's signature


def _defined_at(func: Any, fallback: Path) -> str:
    """'file, line N' of a function's `def` (through decorators), or the fallback file."""
    code = getattr(inspect.unwrap(getattr(func, "__func__", func)), "__code__", None)
    return f"{code.co_filename}, line {code.co_firstlineno}" if code is not None else str(fallback)


@dataclass(frozen=True)
class CallShape:
    """How the runtime calls one method of the predictor class.

    The runtime passes `positional` arguments in order, then, by keyword, each name in `optional`
    that the method declares (by name, or through `**kwargs`). Anything else the method requires
    cannot be supplied, which is a load error naming the file, line and this accepted shape. To
    inject something new, add its name to `optional` (and pass it where the method is called).
    """

    method: str
    positional: tuple[str, ...]
    optional: tuple[str, ...] = ()

    @property
    def accepted(self) -> str:
        return f"{self.method}(self, {', '.join(self.positional)}" + "".join(f"[, {n}]" for n in self.optional) + ")"

    def check(self, api: str, cls: type, file: Path) -> tuple[str, ...]:
        """The optional names this class's method declares; LoadError if the runtime cannot call it."""
        try:
            raw = inspect.getattr_static(cls, self.method)
        except AttributeError:
            raw = None
        if raw is None or raw is object.__init__:
            raise LoadError(api, str(file), f"class {cls.__name__} has no {self.method} method: define {self.accepted}")
        func = getattr(cls, self.method)
        try:
            signature = inspect.signature(func)
        except (TypeError, ValueError):  # not introspectable (e.g. implemented in C): trust it
            return self.optional
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
        declared = self.optional if takes_any else tuple(n for n in self.optional if n in signature.parameters)
        bound_self = (_SELF,) if inspect.isfunction(raw) else ()  # staticmethod/classmethod: nothing to bind
        try:
            signature.bind(*bound_self, *self.positional, **{n: None for n in declared})
        except TypeError as err:
            raise LoadError(
                api, _defined_at(raw, file),
                f"{cls.__name__}.{self.method}{signature} cannot be called by the runtime ({err}); accepted: "
                f"{self.accepted}" + (", the bracketed ones passed only when declared" if self.optional else "")
                + "; any other parameter needs a default",
            ) from None
        return declared


#: `__init__` gets the api.yaml `predictor.config` mapping, and the local folder of `predictor.model_uri` when it
#: declares `model_dir` (init_kwargs refuses a required model_dir without a model_uri).
INIT_CALL = CallShape("__init__", ("config",), ("model_dir",))
#: `predict` gets the decoded payload, plus the request's query parameters and headers when it declares them.
PREDICT_CALL = CallShape("predict", ("payload",), ("query_params", "headers"))


def _check_calls(folder: Path, spec: ApiSpec, cls: type) -> tuple[str, ...]:
    """Both methods callable as the runtime calls them, and no streaming with batching; predict's optional names."""
    file = folder / spec.predictor.path
    INIT_CALL.check(spec.name, cls, file)
    declared = PREDICT_CALL.check(spec.name, cls, file)
    predict = getattr(cls, "predict")
    if spec.batching is not None and call_kind(predict) in STREAMING_KINDS:
        raise LoadError(
            spec.name, _defined_at(predict, file),
            f"{cls.__name__}.predict is a generator (it streams its results) and {folder / 'api.yaml'} sets "
            "`batching`: streaming and batching do not combine; remove `batching` from api.yaml, or return "
            "the result instead of yielding it",
        )
    _check_protocols(folder, spec, cls, call_kind(predict), _defined_at(predict, file))
    return declared


def _check_protocols(folder: Path, spec: ApiSpec, cls: type, kind: CallKind, where: str) -> None:
    """Each protocol in networking.protocols can be served by this predict (protocol_openai.py, protocol_oip.py)."""
    protocols = spec.networking.protocols
    yaml_file = folder / "api.yaml"
    streams = kind in STREAMING_KINDS
    if "oip" in protocols and streams:
        raise LoadError(
            spec.name, where,
            f"{cls.__name__}.predict is a generator and {yaml_file} networking.protocols lists oip: an Open "
            "Inference Protocol request answers each row with one result, so predict must return it, not yield",
        )
    routes = getattr(spec, "openai_routes", [])
    if "embeddings" in routes and streams:
        raise LoadError(
            spec.name, where,
            f"{cls.__name__}.predict is a generator and {yaml_file} openai.routes lists embeddings: an embedding "
            "is one vector per input, so predict must return it, not yield",
        )


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


def pip_install_command(folder: Path) -> str:
    """The exact command that installs the API's requirements into the Python running this code (a bare `pip`
    in a new shell is another Python's: `make local` installs into .venv, which nothing activates)."""
    return f"{shlex.quote(sys.executable)} -m pip install -r {shlex.quote(str(Path(folder) / 'requirements.txt'))}"


def _install_hint(err: BaseException, folder: Path) -> str:
    if isinstance(err, ModuleNotFoundError) and (folder / "requirements.txt").is_file():
        return f" (install the API's dependencies: {pip_install_command(folder)})"
    return ""


#: module name -> (the module object, its file's real path), as found the first time it was looked at. A
#: module object's file does not move once it is imported; a module imported again is a new object, looked at anew.
_REAL_FILES: dict[str, tuple[Any, str]] = {}


def _real_files() -> Iterator[tuple[str, str]]:
    """(name, real path of its file) of every loaded module with a file (symbolic links followed).

    A process has a thousand modules or more (the runtime, FastAPI, numpy ...) in a hundred or so folders: each
    folder's name is looked up once, and a file on its own only where it is itself a symbolic link (what
    `Path.resolve` of each file gives, at a fraction of its system calls); and a module seen before is not
    looked up again (`_REAL_FILES`)."""
    real_dirs: dict[str, str] = {}

    def real_dir(path: str) -> str:
        # A folder's real path from its parent's (each folder's name looked up once, not once per file).
        found = real_dirs.get(path)
        if found is None:
            parent, name = os.path.split(path)
            if parent == path or not name:
                found = path
            else:
                found = os.path.join(real_dir(parent), name)
                if os.path.islink(found):
                    found = os.path.realpath(found)
            real_dirs[path] = found
        return found

    for name, module in list(sys.modules.items()):
        known = _REAL_FILES.get(name)
        if known is not None and known[0] is module:
            yield name, known[1]
            continue
        file = getattr(module, "__file__", None)
        if not file or not isinstance(file, str):
            continue
        try:
            if os.path.islink(file):
                real = os.path.realpath(file)
            else:
                head, tail = os.path.split(os.path.abspath(file))
                real = os.path.join(real_dir(head), tail)
        except (OSError, ValueError):
            continue
        _REAL_FILES[name] = (module, real)
        yield name, real


def remember_module_files() -> None:
    """Look up the files of the modules loaded so far (the warm standby does, before its API is known)."""
    for _ in _real_files():
        pass


def _forget_modules_from(folder: Path) -> None:
    """Drop modules imported from the API folder so a reload sees edited helper modules."""
    root = str(folder.resolve())
    inside = root.rstrip(os.sep) + os.sep
    for name, real in list(_real_files()):
        if real == root or real.startswith(inside):
            sys.modules.pop(name, None)
            _REAL_FILES.pop(name, None)


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
        raise LoadError(spec.name, str(file), f"class {spec.predictor.class_name} has no {PREDICT_CALL.accepted} method")
    _check_calls(folder, spec, cls)
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
    declared = PREDICT_CALL.check(spec.name, cls, folder / spec.predictor.path)
    return Predictor(
        instance=instance,
        predict=bound,
        kind=call_kind(bound),
        wants_query_params="query_params" in declared,
        wants_headers="headers" in declared,
    )
