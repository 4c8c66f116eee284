"""Run `__main__.py` under mocks with a stack's config loaded from `Pulumi.<stack>.yaml`."""

from __future__ import annotations

import asyncio
import json
import os
import runpy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.sync_await import _sync_await
from pulumi.runtime.stack import run_pulumi_func

from process_lock import file_lock, repo_lock_path

from .pulumi_mocks import MyelinMocks, Recorded

REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "__main__.py"


@dataclass
class Node:
    """A registered resource (custom or component) with the options the engine would see."""

    typ: str
    name: str
    custom: bool
    remote: bool
    parent: "Node | None" = field(repr=False)
    depends_on: list["Node"] = field(repr=False)
    provider: "Node | None" = field(repr=False)
    custom_timeouts: Any = field(repr=False)
    children: list["Node"] = field(repr=False)

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other

    @property
    def key(self) -> tuple[str, str]:
        return (self.typ, self.name)

    def descendants(self) -> list["Node"]:
        out = []
        for child in self.children:
            out.append(child)
            out.extend(child.descendants())
        return out


@dataclass
class StackRun:
    stack: str
    config: dict[str, Any]
    resources: list[Recorded]
    calls: list[tuple[str, dict]]
    outputs: dict[str, Any]
    secret_outputs: set[str]
    ignore_changes: dict[str, list[str]]
    nodes: list[Node]
    #: resource name -> the names of its aliases (ResourceOptions.aliases), where it has any
    aliases: dict[str, list[str]] = field(default_factory=dict)

    def node(self, typ: str, name: str) -> Node:
        matches = [n for n in self.nodes if n.typ == typ and n.name == name]
        assert len(matches) == 1, f"expected one {typ} named {name}, got {len(matches)}"
        return matches[0]

    def nodes_of(self, typ_prefix: str) -> list[Node]:
        return [n for n in self.nodes if n.typ.startswith(typ_prefix)]

    def direct_deps(self, node: Node) -> set[Node]:
        """What the engine orders `node` after: its depends_on (a local component expands to the custom and remote
        resources below it, as the SDK's _expand_dependencies does), its provider, and its parent custom resource."""
        deps: set[Node] = set()
        todo = list(node.depends_on)
        while todo:
            dep = todo.pop()
            if dep.custom or dep.remote:
                deps.add(dep)
            else:
                todo.extend(dep.children)
        if node.provider is not None:
            deps.add(node.provider)
        if node.parent is not None and node.parent.custom:
            deps.add(node.parent)
        return deps

    def all_deps(self, node: Node) -> set[Node]:
        """Everything `node` is created after (and, on destroy, deleted before)."""
        seen: set[Node] = set()
        todo = [node]
        while todo:
            for dep in self.direct_deps(todo.pop()):
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        return seen

    def of_type(self, typ: str) -> list[Recorded]:
        return [r for r in self.resources if r.typ == typ]

    def k8s(self, kind: str) -> list[Recorded]:
        return [r for r in self.resources if r.typ.startswith("kubernetes:") and r.inputs.get("kind") == kind]

    def api_deployments(self) -> list[Recorded]:
        """The RealtimeAPIs' workloads (the predictor pods): Deployments, and the Argo Rollouts of APIs released
        as canaries (the same pod template); not the platform's own (the cold-start responder) nor an AsyncAPI's
        (components `gateway` and `worker`: tests/infra/test_asyncapi.py)."""
        return self.api_objects("Deployment") + self.api_objects("Rollout")

    def api_objects(self, kind: str, component: str = "predictor") -> list[Recorded]:
        """Objects of `kind` labelled with this `app.kubernetes.io/component`: `predictor` (a RealtimeAPI),
        `gateway` or `worker` (an AsyncAPI)."""
        return [r for r in self.k8s(kind)
                if r.inputs["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component]

    def async_apis(self) -> list[str]:
        """The AsyncAPIs of the stack, by their gateway Deployments."""
        return sorted(r.inputs["metadata"]["name"] for r in self.api_objects("Deployment", "gateway"))

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
    """The committed stack file's config, as is (its CIDRs are documentation placeholders, refused on purpose)."""
    data = yaml.safe_load((path or REPO / f"Pulumi.{stack}.yaml").read_text()) or {}
    return dict(data.get("config") or {})


#: What a user sets before the first `pulumi up` (README, Deploy to AWS): their network instead of the
#: documentation placeholders, e.g. `pulumi config set --path 'myelin:cluster.endpoint_public_access_cidrs[0]' ...`.
USER_CIDRS = {"dev": ["198.18.0.0/24"], "prod": ["198.18.10.0/24", "198.18.11.0/24"]}


def user_config(stack: str) -> dict[str, Any]:
    """The committed stack file with the user's own CIDRs in place of the placeholders."""
    config = stack_config(stack)
    cluster = dict(config["myelin:cluster"])
    cluster["endpoint_public_access_cidrs"] = USER_CIDRS[stack]
    config["myelin:cluster"] = cluster
    return config


def apply_config(config: dict[str, Any]) -> None:
    values: dict[str, str] = {}
    secret_keys: list[str] = []
    for key, value in config.items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            value = "test-secret"  # ciphertext only the Pulumi CLI can decrypt
            secret_keys.append(key)
        values[key] = value if isinstance(value, str) else json.dumps(value)
    pulumi.runtime.set_all_config(values, secret_keys)


def ensure_event_loop() -> None:
    """Pulumi's mocks run on the main thread's event loop (asyncio.get_event_loop); a test elsewhere in the
    session that called asyncio.run() leaves the main thread without one, whatever the test order."""
    try:
        asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())


def run_program(stack: str, config: dict[str, Any], main: Path = MAIN) -> StackRun:
    """Register the whole program; returns every recorded resource and the resolved stack outputs."""
    ensure_event_loop()
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
    aliases: dict[str, list[str]] = {}

    original_init = pulumi.CustomResource.__init__
    original_resource_init = pulumi.Resource.__init__
    by_object: dict[int, Node] = {}
    nodes: list[Node] = []

    def recording_init(self, t, name, props=None, opts=None, *args, **kwargs):
        # Resource options never reach the mocks (and stack transforms do not run under them): note them here.
        if opts is not None and opts.ignore_changes:
            ignore_changes[name] = list(opts.ignore_changes)
        if opts is not None and opts.aliases:
            aliases[name] = [a.name if isinstance(a, pulumi.Alias) else str(a) for a in opts.aliases]
        original_init(self, t, name, props, opts, *args, **kwargs)

    def recording_resource_init(self, t, name, custom=False, props=None, opts=None, remote=False, *args, **kwargs):
        original_resource_init(self, t, name, custom, props, opts, remote, *args, **kwargs)
        opts = opts or pulumi.ResourceOptions()
        parent = by_object.get(id(opts.parent)) if opts.parent is not None else None
        depends = opts.depends_on if isinstance(opts.depends_on, list) else ([opts.depends_on] if opts.depends_on else [])
        node = Node(
            typ=t, name=name, custom=custom, remote=remote, parent=parent,
            depends_on=[by_object[id(d)] for d in depends if id(d) in by_object],
            # The provider the SDK resolved (explicit, or inherited from the parent).
            provider=by_object.get(id(getattr(self, "_provider", None) or opts.provider)),
            custom_timeouts=opts.custom_timeouts, children=[],
        )
        if parent is not None:
            parent.children.append(node)
        by_object[id(self)] = node
        nodes.append(node)

    def program() -> None:
        pulumi.CustomResource.__init__ = recording_init
        pulumi.Resource.__init__ = recording_resource_init
        cwd = os.getcwd()
        os.chdir(REPO)
        pulumi.export = capture
        try:
            runpy.run_path(str(main), run_name="__main__")
        finally:
            pulumi.export = original_export
            pulumi.CustomResource.__init__ = original_init
            pulumi.Resource.__init__ = original_resource_init
            os.chdir(cwd)
        resolved = _sync_await(pulumi.Output.from_input(exported).future())
        outputs.update(resolved or {})
        for name, value in exported.items():
            if isinstance(value, pulumi.Output) and _sync_await(value.is_secret()):
                secret_outputs.add(name)

    # One program run at a time across the test run's processes: each run stages the images' build contexts under
    # the repository's .myelin/build/<stack>-<api>/, deleting what is there first.
    with file_lock(repo_lock_path("pulumi-program")):
        _sync_await(run_pulumi_func(program))
    return StackRun(stack=stack, config=config, resources=list(mocks.resources), calls=list(mocks.calls),
                    outputs=outputs, secret_outputs=secret_outputs, ignore_changes=ignore_changes, nodes=nodes,
                    aliases=aliases)
