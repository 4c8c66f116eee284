"""Run `__main__.py` under mocks with a stack's config loaded from `Pulumi.<stack>.yaml`."""

from __future__ import annotations

import json
import os
import runpy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.sync_await import _sync_await
from pulumi.runtime.stack import run_pulumi_func

from .pulumi_mocks import MyelinMocks, Recorded

REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "__main__.py"


@dataclass
class StackRun:
    stack: str
    config: dict[str, Any]
    resources: list[Recorded]
    calls: list[tuple[str, dict]]
    outputs: dict[str, Any]
    secret_outputs: set[str]
    ignore_changes: dict[str, list[str]]

    def of_type(self, typ: str) -> list[Recorded]:
        return [r for r in self.resources if r.typ == typ]

    def k8s(self, kind: str) -> list[Recorded]:
        return [r for r in self.resources if r.typ.startswith("kubernetes:") and r.inputs.get("kind") == kind]

    def named(self, typ: str, name: str) -> Recorded:
        matches = [r for r in self.resources if r.typ == typ and r.name == name]
        assert len(matches) == 1, f"expected one {typ} named {name}, got {len(matches)}"
        return matches[0]


SECRET_SIG = "4dabf18193072939515e22adb298388d"


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SECRET_SIG) == "1b47061264138c4ac30d75fd1eb44270"


def unwrap_secrets(value: Any) -> Any:
    if is_secret(value):
        return unwrap_secrets(value["value"])
    if isinstance(value, dict):
        return {k: unwrap_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap_secrets(v) for v in value]
    return value


def stack_config(stack: str, path: Path | None = None) -> dict[str, Any]:
    data = yaml.safe_load((path or REPO / f"Pulumi.{stack}.yaml").read_text()) or {}
    return dict(data.get("config") or {})


def apply_config(config: dict[str, Any]) -> None:
    values: dict[str, str] = {}
    secret_keys: list[str] = []
    for key, value in config.items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            value = "test-secret"  # ciphertext only the Pulumi CLI can decrypt
            secret_keys.append(key)
        values[key] = value if isinstance(value, str) else json.dumps(value)
    pulumi.runtime.set_all_config(values, secret_keys)


def run_program(stack: str, config: dict[str, Any], main: Path = MAIN) -> StackRun:
    """Register the whole program; returns every recorded resource and the resolved stack outputs."""
    region = str(config.get("aws:region", "us-west-2"))
    mocks = MyelinMocks(region=region)
    pulumi_settings.ROOT.set(None)
    pulumi.runtime.set_mocks(mocks, project="myelin", stack=stack, preview=False)
    apply_config(config)
    exported: dict[str, Any] = {}
    original_export = pulumi.export

    def capture(name: str, value: Any) -> None:
        exported[name] = value
        original_export(name, value)

    outputs: dict[str, Any] = {}
    secret_outputs: set[str] = set()
    ignore_changes: dict[str, list[str]] = {}

    original_init = pulumi.CustomResource.__init__

    def recording_init(self, t, name, props=None, opts=None, *args, **kwargs):
        # Resource options never reach the mocks (and stack transforms do not run under them): note them here.
        if opts is not None and opts.ignore_changes:
            ignore_changes[name] = list(opts.ignore_changes)
        original_init(self, t, name, props, opts, *args, **kwargs)

    def program() -> None:
        pulumi.CustomResource.__init__ = recording_init
        cwd = os.getcwd()
        os.chdir(REPO)
        pulumi.export = capture
        try:
            runpy.run_path(str(main), run_name="__main__")
        finally:
            pulumi.export = original_export
            pulumi.CustomResource.__init__ = original_init
            os.chdir(cwd)
        resolved = _sync_await(pulumi.Output.from_input(exported).future())
        outputs.update(resolved or {})
        for name, value in exported.items():
            if isinstance(value, pulumi.Output) and _sync_await(value.is_secret()):
                secret_outputs.add(name)

    _sync_await(run_pulumi_func(program))
    return StackRun(stack=stack, config=config, resources=list(mocks.resources), calls=list(mocks.calls),
                    outputs=outputs, secret_outputs=secret_outputs, ignore_changes=ignore_changes)
