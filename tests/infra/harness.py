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

    def of_type(self, typ: str) -> list[Recorded]:
        return [r for r in self.resources if r.typ == typ]

    def k8s(self, kind: str) -> list[Recorded]:
        return [r for r in self.resources if r.typ.startswith("kubernetes:") and r.inputs.get("kind") == kind]

    def named(self, typ: str, name: str) -> Recorded:
        matches = [r for r in self.resources if r.typ == typ and r.name == name]
        assert len(matches) == 1, f"expected one {typ} named {name}, got {len(matches)}"
        return matches[0]


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

    def program() -> None:
        cwd = os.getcwd()
        os.chdir(REPO)
        pulumi.export = capture
        try:
            runpy.run_path(str(main), run_name="__main__")
        finally:
            pulumi.export = original_export
            os.chdir(cwd)
        resolved = _sync_await(pulumi.Output.from_input(exported).future())
        outputs.update(resolved or {})

    _sync_await(run_pulumi_func(program))
    return StackRun(stack=stack, config=config, resources=list(mocks.resources), calls=list(mocks.calls),
                    outputs=outputs)
