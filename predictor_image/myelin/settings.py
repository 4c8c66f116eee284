"""Server settings from the environment, read once at start-up into one frozen object.

Like uvicorn's `Config`, the object is built by the command line and passed down (to the app, the
HTTP protocol, the supervisor's workers); nothing reads `MYELIN_*` variables per connection or per
request. A bad value is an error that names the variable, not a silent default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

from .contract import MODEL_CACHE_ENV, MODEL_CACHE_MAX_BYTES_ENV, MODEL_VERSION_ENV
from . import contract as c


class SettingsError(ValueError):
    """A `MYELIN_*` (or `PORT`) environment variable with a value that cannot be used."""


def _positive_float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a number of seconds, like 10 or 2.5") from None
    if not value > 0:
        raise SettingsError(f"{name}={raw!r}: must be greater than 0")
    return value


def _positive_int(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a whole number") from None
    if value <= 0:
        raise SettingsError(f"{name}={raw!r}: must be greater than 0")
    return value


def _log_level(name: str, raw: str) -> str:
    levels = ("critical", "error", "warning", "info", "debug", "trace")
    if raw.lower() not in levels:
        raise SettingsError(f"{name}={raw!r}: use one of {', '.join(levels)}")
    return raw.lower()


def _header_name(name: str, raw: str) -> str:
    token = raw.strip().lower()
    if not token or any(not (ch.isalnum() or ch in "-_") for ch in token):
        raise SettingsError(f"{name}={raw!r}: expected an HTTP header name, like x-amzn-trace-id")
    return token


def _size(name: str, raw: str) -> int:
    from .spec.fields import parse_memory

    try:
        value = parse_memory(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a number of bytes or a size like 20Gi") from None
    if value <= 0:
        raise SettingsError(f"{name}={raw!r}: must be greater than 0")
    return value


def _path(name: str, raw: str) -> str:
    return os.path.expanduser(raw)


def _role(name: str, raw: str) -> str:
    if raw not in c.ROLES:
        raise SettingsError(f"{name}={raw!r}: use one of {', '.join(c.ROLES)}")
    return raw


def _async_store(name: str, raw: str) -> str:
    stores = (c.ASYNC_STORE_SQLITE, c.ASYNC_STORE_SQS)
    if raw not in stores:
        raise SettingsError(f"{name}={raw!r}: use one of {', '.join(stores)}")
    return raw


def _aliases(name: str, raw: str) -> tuple[tuple[str, str], ...]:
    """`<splitter>=<path>,...`: the extra paths one API answers on (a TrafficSplitter's endpoint in the cloud)."""
    out: list[tuple[str, str]] = []
    for entry in (e.strip() for e in raw.split(",")):
        splitter, sep, path = entry.partition("=")
        splitter, path = splitter.strip(), path.strip()
        if not sep or not splitter or not path.startswith("/") or path == "/" or path.endswith("/") or "//" in path:
            raise SettingsError(f"{name}={raw!r}: {entry!r} is not <splitter>=<path>, like canary=/predict "
                                "(a path starting with /, not ending with one)")
        if any(path == p for _, p in out):
            raise SettingsError(f"{name}={raw!r}: {path} is named twice")
        out.append((splitter, path))
    return tuple(out)


@dataclass(frozen=True)
class ShadowTarget:
    """Where an API copies the requests it answers on a splitter's path (MYELIN_SHADOW_TARGETS; shadow.py)."""

    splitter: str
    url: str  # http://<host>[:<port>]/<the shadow's endpoint>
    shadow: str  # the shadow API's name (the `api` label of the shadow metrics)
    timeout: float | None = None  # the shadow's serving.timeout in seconds (unset: the API's own)
    max_body: int | None = None  # the shadow's serving.max_body_size in bytes (unset: the API's own)


_SHADOW_EXAMPLE = ("sentiment=http://sentiment-v3.apis.svc.cluster.local./sentiment-v3;api=sentiment-v3;timeout=30;"
                   "max_body=10Mi")


def _shadow_targets(name: str, raw: str) -> tuple[ShadowTarget, ...]:
    """`<splitter>=<url>[;api=<name>][;timeout=<seconds>][;max_body=<size>],...`: the shadow of each splitter whose
    path this API answers (MYELIN_ENDPOINT_ALIASES), copied to in the background."""
    from urllib.parse import urlsplit

    out: list[ShadowTarget] = []
    for entry in (e.strip() for e in raw.split(",")):
        head, *params = [p.strip() for p in entry.split(";")]
        splitter, sep, url = (x.strip() for x in head.partition("="))
        parts = urlsplit(url) if sep else None
        if (parts is None or not splitter or parts.scheme != "http" or not parts.hostname or parts.query
                or parts.fragment or not parts.path.startswith("/") or parts.path == "/"):
            raise SettingsError(f"{name}={raw!r}: {entry!r} is not <splitter>=<url>, like {_SHADOW_EXAMPLE} (an "
                                "http:// URL with the shadow's endpoint as its path, no query)")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise SettingsError(f"{name}={raw!r}: {entry!r} has a bad port") from None
        values: dict[str, Any] = {"shadow": parts.hostname.split(".")[0]}
        for param in params:
            key, eq, value = (x.strip() for x in param.partition("="))
            if not eq or key not in ("api", "timeout", "max_body") or not value:
                raise SettingsError(f"{name}={raw!r}: {param!r} in {splitter}'s entry is not api=<name>, "
                                    "timeout=<seconds> or max_body=<size>")
            if key == "api":
                values["shadow"] = value
            elif key == "timeout":
                values["timeout"] = _positive_float(name, value)
            else:
                values["max_body"] = _size(name, value)
        if any(t.splitter == splitter for t in out):
            raise SettingsError(f"{name}={raw!r}: splitter {splitter} is named twice (a splitter has one shadow)")
        out.append(ShadowTarget(splitter=splitter, url=url, **values))
    return tuple(out)


def shadow_targets_value(targets: tuple[ShadowTarget, ...]) -> str:
    """The MYELIN_SHADOW_TARGETS value `_shadow_targets` reads back as `targets` (the cluster writes it)."""
    def entry(t: ShadowTarget) -> str:
        params = [f"api={t.shadow}"]
        if t.timeout is not None:
            params.append(f"timeout={t.timeout:g}")
        if t.max_body is not None:
            params.append(f"max_body={t.max_body}")
        return ";".join([f"{t.splitter}={t.url}", *params])

    return ",".join(entry(t) for t in targets)


def _text(name: str, raw: str) -> str:
    return raw


def _queue_url(name: str, raw: str) -> str:
    if not raw.startswith(("https://", "http://")):
        raise SettingsError(f"{name}={raw!r}: expected an SQS queue URL, like https://sqs.<region>.amazonaws.com/<account>/<queue>")
    return raw


def _s3_uri(name: str, raw: str) -> str:
    bucket = raw[len("s3://"):].split("/", 1)[0] if raw.startswith("s3://") else ""
    if not bucket:
        raise SettingsError(f"{name}={raw!r}: expected s3://<bucket>/<prefix>")
    return raw


#: field name -> (environment variable, parser). Documented in the README's server settings table.
ENVIRONMENT: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "header_timeout": ("MYELIN_HEADER_TIMEOUT", _positive_float),
    "body_timeout": ("MYELIN_BODY_TIMEOUT", _positive_float),
    "keep_alive_timeout": ("MYELIN_KEEP_ALIVE_TIMEOUT", _positive_int),
    "write_timeout": ("MYELIN_WRITE_TIMEOUT", _positive_float),
    "liveness_period": ("MYELIN_LIVENESS_PERIOD", _positive_float),
    "uvicorn_log_level": ("MYELIN_UVICORN_LOG_LEVEL", _log_level),
    "max_header_bytes": ("MYELIN_MAX_HEADER_BYTES", _positive_int),
    "max_body_bytes_in_flight": ("MYELIN_MAX_BODY_BYTES_IN_FLIGHT", _size),
    "arrival_header": ("MYELIN_ARRIVAL_HEADER", _header_name),
    "model_cache": (MODEL_CACHE_ENV, _path),
    "model_cache_max_bytes": (MODEL_CACHE_MAX_BYTES_ENV, _size),
    "model_version": (MODEL_VERSION_ENV, _text),
    "role": (c.ROLE_ENV, _role),
    "state_dir": (c.STATE_DIR_ENV, _text),
    "async_store": (c.ASYNC_STORE_ENV, _async_store),
    "async_queue_url": (c.ASYNC_QUEUE_URL_ENV, _queue_url),
    "async_dead_letter_queue_url": (c.ASYNC_DEAD_LETTER_QUEUE_URL_ENV, _queue_url),
    "async_storage_uri": (c.ASYNC_STORAGE_URI_ENV, _s3_uri),
    "endpoint_aliases": (c.ENDPOINT_ALIASES_ENV, _aliases),
    "shadow_targets": (c.SHADOW_TARGETS_ENV, _shadow_targets),
}
_SQS_SETTINGS = ("async_queue_url", "async_dead_letter_queue_url", "async_storage_uri")


@dataclass(frozen=True)
class Settings:
    #: Seconds a client may take to send a request's headers (then 408 and close).
    header_timeout: float = 10.0
    #: Seconds a client may take to send a request's body once the headers are in.
    body_timeout: float = 60.0
    #: Idle keep-alive seconds: longer than the load balancer's idle timeout (the cluster sets it), or the
    #: balancer reuses connections the server just closed (sporadic 502s).
    keep_alive_timeout: int = 75
    #: Seconds a response may make no progress towards a client that does not read (the connection's unsent
    #: bytes stay above the transport's high-water mark); then the connection is aborted and its memory freed.
    write_timeout: float = 30.0
    #: `myelin local`: seconds between liveness probes (GET /healthz) of each API's process, as the cluster's
    #: livenessProbe (period 10 s, timeout 5 s, 3 failures); a process failing 3 in a row is killed and restarted.
    liveness_period: float = 10.0
    #: uvicorn's own log level (request logs are Myelin's JSON lines either way).
    uvicorn_log_level: str = "warning"
    #: Largest request line + headers accepted; beyond it 431 and the connection is closed.
    max_header_bytes: int = 64 * 1024
    #: Bytes of request bodies being received at once by one process, all its APIs together (lifecycle.py):
    #: a request whose declared length does not fit is refused (503, Retry-After) before its body is read.
    max_body_bytes_in_flight: int = 256 * 2**20
    #: Request header with the request's arrival time at the load balancer (APIs scaled to zero: arrival.py).
    arrival_header: str | None = None
    #: Where `predictor.model_uri` files are cached (content-addressed; see model_files.py).
    model_cache: str = os.path.expanduser("~/.cache/myelin/models")
    #: Bound of that cache: least recently used models not in use are evicted to stay under it.
    model_cache_max_bytes: int = 20 * 2**30
    #: The model version recorded at deploy time (cluster only); a mismatch is logged, not fatal.
    model_version: str = ""
    #: AsyncAPI: what this process runs (`gateway`, `worker` or `all`); `myelin serve --role` overrides it.
    role: str = c.ROLE_ALL
    #: AsyncAPI, embedded store: the folder of the SQLite job files (relative to the working directory).
    state_dir: str = ".myelin"
    #: AsyncAPI: `sqlite` (embedded, local) or `sqs` (the cloud: SQS queues and an S3 prefix, below).
    async_store: str = c.ASYNC_STORE_SQLITE
    async_queue_url: str = ""
    async_dead_letter_queue_url: str = ""
    async_storage_uri: str = ""
    #: `myelin serve` of one RealtimeAPI: (splitter, path) pairs it also answers on, as on its own endpoint (the
    #: cloud's TrafficSplitter: the ALB forwards the splitter's path unchanged to the API's pods).
    endpoint_aliases: tuple[tuple[str, str], ...] = ()
    #: With endpoint_aliases: the shadow of each splitter that has one, where a copy of each request answered on
    #: that splitter's path goes (the cloud's shadow: shadow.py).
    shadow_targets: tuple[ShadowTarget, ...] = ()

    def __post_init__(self) -> None:
        aliased = {splitter for splitter, _ in self.endpoint_aliases}
        stray = [t.splitter for t in self.shadow_targets if t.splitter not in aliased]
        if stray:
            raise SettingsError(f"{c.SHADOW_TARGETS_ENV}: {', '.join(stray)} not in {c.ENDPOINT_ALIASES_ENV} "
                                f"({', '.join(sorted(aliased)) or 'unset'}): a shadow copies the requests this API "
                                "answers on its splitter's path, so that path must be one of its aliases")
        env = {f: ENVIRONMENT[f][0] for f in _SQS_SETTINGS}
        if self.async_store == c.ASYNC_STORE_SQS:
            missing = [env[f] for f in _SQS_SETTINGS if not getattr(self, f)]
            if missing:
                raise SettingsError(f"{c.ASYNC_STORE_ENV}=sqs needs {', '.join(missing)} as well")
        else:
            stray = [env[f] for f in _SQS_SETTINGS if getattr(self, f)]
            if stray:
                raise SettingsError(f"{', '.join(stray)} set, but {c.ASYNC_STORE_ENV} is not 'sqs': set "
                                    f"{c.ASYNC_STORE_ENV}=sqs to use them, or unset them")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Settings":
        """Read every variable once; raise SettingsError naming the first bad one."""
        values: dict[str, Any] = {}
        for field in fields(cls):
            var, parse = ENVIRONMENT[field.name]
            raw = environ.get(var, "").strip()
            if raw:
                values[field.name] = parse(var, raw)
        return cls(**values)
