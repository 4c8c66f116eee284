"""`myelin` command line: `local`, `serve`, `validate`."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from . import contract as c
from .settings import Settings, SettingsError
from .spec import SpecError, load_specs, resolve_spec

DEFAULT_PORT = 8888


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _settings(command: str) -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as err:
        raise SystemExit(f"{command}: {err}") from None


def _port(value: int | None) -> int:
    if value is not None:
        return value
    env = os.environ.get("PORT")
    if env:
        try:
            return int(env)
        except ValueError:
            raise SystemExit(f"myelin: PORT={env!r} is not a port number") from None
    return DEFAULT_PORT


def cmd_serve(args: argparse.Namespace) -> int:
    folder = Path(args.api).resolve()
    try:
        spec = resolve_spec(folder)
    except SpecError as err:
        _err(f"myelin serve: {err}")
        return 2
    port = _port(args.port)
    settings = _settings("myelin serve")
    if args.role is not None:
        settings = dataclasses.replace(settings, role=args.role)
    if settings.role != c.ROLE_ALL and spec.kind != "AsyncAPI":
        _err(f"myelin serve: --role {settings.role} (or {c.ROLE_ENV}) applies to kind AsyncAPI only; "
             f"{spec.name} is a {spec.kind}, served with role {c.ROLE_ALL}")
        return 2
    if spec.serving.processes > 1:
        from .process import Supervisor

        return Supervisor(folder, spec, args.host, port, settings).run()
    from .process import run_app
    from .server import MyelinApp

    app = MyelinApp([(folder, spec)], settings=settings)
    role = f" (AsyncAPI, role {settings.role})" if spec.kind == "AsyncAPI" else ""
    _err(f"myelin: serving {spec.name} at http://{args.host}:{port}{spec.endpoint}{role}")
    run_app(app, args.host, port, spec.serving.drain_timeout.seconds, settings)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .loader import LoadError, import_predictor_class

    specs, errors = load_specs(args.paths or ["apis"])
    for err in errors:
        print(f"✗ {err}")
    for folder, spec in specs.items():
        try:
            import_predictor_class(folder, spec)
        except LoadError as err:
            print(f"✗ {spec.name}: {err}")
            errors.append(str(err))
            continue
        if spec.kind == "AsyncAPI":
            mode = f"async jobs, retention {spec.jobs.retention}, max_attempts {spec.jobs.max_attempts}"
        else:
            mode = f"batching ≤{spec.batching.max_batch_size}" if spec.batching else "no batching"
        print(f"✓ {spec.name:<24} {folder}  POST {spec.endpoint}  ({mode}, gpu={spec.compute.gpu})")
    return 1 if errors else 0


def cmd_local(args: argparse.Namespace) -> int:
    from .local import serve_local

    settings = _settings("myelin local")
    if settings.role != c.ROLE_ALL:
        raise SystemExit(f"myelin local: runs every API whole (gateway and worker in one process); unset {c.ROLE_ENV}")
    return serve_local(args.apis, args.host, _port(args.port), settings, reload=not args.no_reload)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="myelin", description="Serve Python predictors as HTTP APIs.")
    sub = parser.add_subparsers(dest="command", required=True)

    local = sub.add_parser("local", help="serve every API under an apis folder on one local port")
    local.add_argument("apis", nargs="?", default="apis", help="folder of API folders (default: apis)")
    local.add_argument("--port", type=int, default=None, help=f"port (default: $PORT or {DEFAULT_PORT})")
    local.add_argument("--host", default="127.0.0.1")
    local.add_argument("--no-reload", action="store_true", help="do not reload APIs when their files change")
    local.set_defaults(func=cmd_local)

    serve = sub.add_parser("serve", help="serve one API folder (the container entrypoint)")
    serve.add_argument("api", help="the API folder (with api.yaml)")
    serve.add_argument("--port", type=int, default=None, help=f"port (default: $PORT or {DEFAULT_PORT})")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a container)")
    serve.add_argument("--role", choices=c.ROLES, default=None,
                       help=f"AsyncAPI only: {c.ROLE_GATEWAY} (submit and status routes), {c.ROLE_WORKER} (runs jobs) "
                            f"or {c.ROLE_ALL} (both; the default, or ${c.ROLE_ENV})")
    serve.set_defaults(func=cmd_serve)

    validate = sub.add_parser("validate", help="check api.yaml files and predictor imports without serving")
    validate.add_argument("paths", nargs="*", help="API folders or apis folders (default: apis)")
    validate.set_defaults(func=cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
