"""`myelin` command line: `local`, `serve`, `validate` (also `python -m myelin`)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from . import contract as c
from .settings import Settings, SettingsError
from .spec import SPEC_FILE, SpecError, load_specs, misnamed_spec, parse_model_uri, resolve_spec

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


def _cost_stack(command: str, stack: str | None, near: Path) -> None:
    """`--stack dev|prod|PATH`: the stack file whose node pools and prices the cost estimate in /info uses; its
    path reaches every server process (and `myelin local`'s API processes) through MYELIN_COST_STACK."""
    if stack is None:
        return
    from .cost import COST_STACK_ENV, CostConfigError, check_stack_file, resolve_stack_file

    try:
        path = resolve_stack_file(stack, [Path.cwd(), near])
        check_stack_file(path)
    except CostConfigError as err:
        raise SystemExit(f"{command}: {err}") from None
    os.environ[COST_STACK_ENV] = str(path)


def cmd_serve(args: argparse.Namespace) -> int:
    folder = Path(args.api).resolve()
    try:
        spec = resolve_spec(folder)
    except SpecError as err:
        _err(f"myelin serve: {err}")
        return 2
    if spec.kind == "TrafficSplitter":
        _err(f"myelin serve: {folder / SPEC_FILE}: kind: {spec.name} is a TrafficSplitter, which is routing with no "
             "predictor: `myelin local` splits its requests, and in the cloud the load balancer does")
        return 2
    _cost_stack("myelin serve", args.stack, folder)
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

        return Supervisor(folder, spec, args.host, port, settings, uds=args.uds).run()
    from .logs import separate_stdout, trace_crashes
    from .process import PortInUse, announce_loaded, bind, run_app
    from .server import MyelinApp

    try:
        sock = bind(args.host, port, uds=args.uds)  # before anything loads: a busy port is the first and only error
    except PortInUse as err:
        _err(f"myelin serve: {err}")
        return 2
    separate_stdout()
    trace_crashes()
    app = MyelinApp([(folder, spec)], exit_on_load_failure=1, on_loaded=announce_loaded, settings=settings)
    where = f"unix:{args.uds}" if args.uds else f"http://{args.host}:{sock.getsockname()[1]}"
    role = f" (AsyncAPI, role {settings.role})" if spec.kind == "AsyncAPI" else ""
    _err(f"myelin: serving {spec.name} at {where}{spec.endpoint}{role}")
    run_app(app, args.host, port, spec.serving.drain_timeout.seconds, settings, sockets=[sock])
    return 0


def _validate_targets(paths: list[str]) -> tuple[list[str], list[str]]:
    """Folders to validate from the command line: an api.yaml path means its folder; a misnamed spec file is
    pointed out (did you mean api.yaml?)."""
    targets, errors = [], []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            if path.name == SPEC_FILE:
                targets.append(str(path.parent))
            elif path.name in ("api.yml", "API.yaml", "Api.yaml", "api.yaml.txt"):
                errors.append(f"{path}: the spec file must be named {SPEC_FILE} (did you mean {path.parent / SPEC_FILE}?)")
            else:
                errors.append(f"{path}: not an {SPEC_FILE} or a folder; give an API folder, its {SPEC_FILE}, "
                              "or a folder of API folders")
            continue
        if path.is_dir() and misnamed_spec(path):
            errors.append(misnamed_spec(path))
            continue
        targets.append(raw)
    return targets, errors


def _serving_problems(folder: Path, spec) -> list[str]:
    """What `myelin local` would refuse to serve although the spec parses and the predictor imports: packages of
    the API's requirements.txt this Python lacks (the same check and message as myelin local), and a local
    `predictor.model_uri` that names no file or folder."""
    from .local import requirements

    problems = []
    missing = requirements.unmet(folder)
    if missing:
        problems.append(f"{folder / 'requirements.txt'}: {requirements.message(folder, missing)}")
    uri = spec.predictor.model_uri
    if uri:
        parsed = parse_model_uri(uri)
        if not parsed.is_s3 and not parsed.local_dir(folder).exists():
            problems.append(f"{folder / SPEC_FILE}: predictor.model_uri: no file or folder at "
                            f"{parsed.local_dir(folder)} (a local path is relative to the API folder)")
    return problems


def cmd_validate(args: argparse.Namespace) -> int:
    from .loader import LoadError, import_predictor_class

    targets, errors = _validate_targets(args.paths or ["apis"])
    specs, spec_errors = load_specs(targets) if targets else ({}, [])
    errors += spec_errors
    for err in errors:
        print(f"✗ {err}")
    for folder, spec in specs.items():
        if spec.kind == "TrafficSplitter":
            split = ", ".join(f"{t.name} {t.weight}%" for t in spec.weighted)
            shadow = f", shadow {spec.shadow.name}" if spec.shadow is not None else ""
            print(f"✓ {spec.name:<24} {folder}  {spec.endpoint}  (TrafficSplitter: {split}{shadow})")
            continue
        problems = _serving_problems(folder, spec)  # first, as myelin local: the missing package, not its ImportError
        for problem in problems:
            print(f"✗ {spec.name}: {problem}")
        if problems:
            errors += problems
            continue
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
        print(f"✓ {spec.name:<24} {folder}  {_routes(spec)}  ({mode}, gpu={spec.compute.gpu})")
    return 1 if errors else 0


def _routes(spec) -> str:
    """The API's front doors, by protocol (networking.protocols)."""
    routes = []
    from .spec.protocols import protocols_of

    protocols = protocols_of(spec)
    if c.PROTOCOL_MYELIN in protocols:
        routes.append(f"POST {spec.endpoint}")
    if c.PROTOCOL_OPENAI in protocols:
        routes.append(f"OpenAI {spec.endpoint}{c.OPENAI_PREFIX} ({', '.join(spec.openai_routes)})")
    if c.PROTOCOL_OIP in protocols:
        routes.append(f"OIP {c.OIP_MODELS_PREFIX}/{spec.name}")
    return ", ".join(routes)


def cmd_local(args: argparse.Namespace) -> int:
    from .local import serve_local

    settings = _settings("myelin local")
    if settings.role != c.ROLE_ALL:
        raise SystemExit(f"myelin local: runs every API whole (gateway and worker in one process); unset {c.ROLE_ENV}")
    _cost_stack("myelin local", args.stack, Path(args.apis))
    return serve_local(args.apis, args.host, _port(args.port), settings, reload=not args.no_reload)


def cmd_cold_start(args: argparse.Namespace) -> int:
    from .cold_start import serve

    return serve(args.host, _port(args.port), _settings("myelin cold-start"))


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="myelin", description="Serve Python predictors as HTTP APIs, on a laptop "
                                     "(myelin local) and in a container (myelin serve).")
    parser.add_argument("--version", action="version", version=f"myelin {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{local,serve,validate}")

    local = sub.add_parser("local", help="serve every API under an apis folder (or one API folder) on one local port",
                           description="Serve every API under APIS (a folder of API folders, or one API folder) on "
                           "one local port, each API in its own server process; edits reload without dropping requests.")
    local.add_argument("apis", nargs="?", default="apis",
                       help="a folder of API folders, or one API folder (default: apis)")
    local.add_argument("--port", type=int, default=None, help=f"port to listen on (default: $PORT or {DEFAULT_PORT})")
    local.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for your network)")
    local.add_argument("--no-reload", action="store_true",
                       help="do not watch the folders: no reload on edits, no new or removed APIs picked up")
    local.add_argument("--stack", default=None, metavar="STACK",
                       help="show the cost estimate (/info and the page) for this stack's nodes and prices: dev, prod (reads "
                            "Pulumi.<stack>.yaml here or above the API folder) or a stack file's path")
    local.set_defaults(func=cmd_local)

    serve = sub.add_parser("serve", help="serve one API folder (the container entrypoint)",
                           description="Serve one API folder: the container's entrypoint. Honours serving.processes; "
                           "exits 1 if the API cannot load, 2 if the port is busy or the spec is invalid.")
    serve.add_argument("api", help="the API folder (with api.yaml; $MYELIN_API_SPEC replaces the file when set)")
    serve.add_argument("--port", type=int, default=None, help=f"port to listen on (default: $PORT or {DEFAULT_PORT})")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: 127.0.0.1; 0.0.0.0 in a container)")
    serve.add_argument("--uds", default=None, metavar="PATH",
                       help="listen on this Unix domain socket instead of a TCP port (myelin local uses it)")
    serve.add_argument("--role", choices=c.ROLES, default=None,
                       help=f"AsyncAPI only: {c.ROLE_GATEWAY} (submit and status routes), {c.ROLE_WORKER} (runs jobs) "
                            f"or {c.ROLE_ALL} (both; the default, or ${c.ROLE_ENV})")
    serve.add_argument("--stack", default=None, metavar="STACK",
                       help="show the cost estimate (/info) for this stack's nodes and prices: dev, prod (reads "
                            "Pulumi.<stack>.yaml here or above the API folder) or a stack file's path")
    serve.set_defaults(func=cmd_serve)

    validate = sub.add_parser("validate", help="check api.yaml files and predictor imports without serving",
                              description="Check specs and that each predictor imports and declares parameters "
                              "the runtime can call, without loading models. Exit 1 on any error.")
    validate.add_argument("paths", nargs="*",
                          help="API folders, their api.yaml files, or folders of API folders (default: apis)")
    validate.set_defaults(func=cmd_validate)

    cold = sub.add_parser("cold-start", help="answer requests held past their deadline while an API scales from zero "
                          "(the cluster runs it)",
                          description="The cluster's fallback for APIs scaled to zero: answers 503 with Retry-After "
                          "to requests KEDA's interceptor held past the API's serving.timeout. Reads "
                          "MYELIN_COLD_START_APIS and MYELIN_PROMETHEUS_URL.")
    cold.add_argument("--port", type=int, default=None, help=f"port to listen on (default: $PORT or {DEFAULT_PORT})")
    cold.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
    cold.set_defaults(func=cmd_cold_start)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
