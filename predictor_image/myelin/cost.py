"""What a prediction costs before it is deployed: CPU seconds per answered prediction, measured per API, and
"≈ $X per 1M predictions on <instance type>" for the node and price the API would get from a stack.

Measurement (`CostMeter`): the process's CPU time (user + system, every thread) and the predictions it answered
(2xx responses; for an AsyncAPI, completed jobs), both counted from the moment the API finished loading, so the
model load is not charged to predictions. It is read when `/info` is asked, never per request. `myelin local`
runs each API in its own process, so each API's figure is its own; a process serving several APIs reports the
process's CPU over all their predictions.

Estimate (`estimate`): the cluster's formula (components/observability/cost.py, the recording rules) for one
replica whose CPU request is kept busy by predictions: cost per hour = cpu × CPU price + memory GiB × RAM price
+ GPUs × GPU price, predictions per second = CPU request / CPU seconds per prediction, so
$ per 1M predictions = 1e6 × cost per hour / (3600 × predictions per second). The node's hourly price is split
into CPU, RAM and GPU prices the way OpenCost splits an AWS node's price (its default price ratios, below), so
the local figure is what the `myelin:cost_per_million_predictions_dollars` rule shows for the same CPU figures.

The stack (`--stack dev|prod` or a path, or MYELIN_COST_STACK) is read from `Pulumi.<stack>.yaml` directly: its
region, the node pool the API lands on (`myelin:cluster.cpu_nodes` or `gpu_nodes`, first instance type = most
preferred), and the API's `myelin:apis.<folder>.overrides`. Nothing here imports pulumi or the infrastructure
program.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from . import contract as c
from . import ec2_prices
from .spec import SpecError, load_api_spec
from .spec.fields import parse_cpu, parse_memory

#: The stack file the estimate reads (`myelin serve --stack` and `myelin local --stack` set it for their APIs).
COST_STACK_ENV = "MYELIN_COST_STACK"

#: OpenCost's default AWS prices (opencost configs/aws.json: CPU, RAM, GPU). OpenCost uses only their ratios to
#: split a node's total hourly price into a per-vCPU, per-GiB and per-GPU price (pkg/costmodel/costmodel.go,
#: GetNodeCost, when the price list gives the node's total only, which it does on AWS).
OPENCOST_CPU = 0.031611
OPENCOST_RAM = 0.004237
OPENCOST_GPU = 0.95

#: Spot price as a share of on-demand: an assumption, not a quote (spot prices move hourly by zone and type;
#: AWS's Spot Instance Advisor shows savings of roughly 30-70% for the general-purpose and GPU families used here).
SPOT_SHARE = (0.30, 0.70)

#: Mirrors components/config.py's defaults (a test keeps them equal): the pool an API lands on when the stack
#: file does not set it.
DEFAULT_CPU_INSTANCE_TYPES = ("m6i.large", "m5.large")

ASSUMPTIONS = (
    "Each replica's CPU request is kept busy by predictions (the autoscaler's aim under steady load); "
    "a replica that idles costs more per prediction.",
    "The node is priced at its on-demand Linux price from the pinned table ({as_of}), split into CPU, memory and "
    "GPU prices with OpenCost's default ratios, as OpenCost does in the cluster; the pod pays for its requests.",
    "Spot is a range of {lo:.0%}-{hi:.0%} of on-demand (an assumption; spot prices move by zone and hour).",
    "CPU seconds per prediction are this process's CPU time since the API loaded over the predictions it "
    "answered (2xx; AsyncAPI: completed jobs), on this machine: a laptop CPU is not the instance's.",
    "GPU time is not measured: for a GPU API the figure assumes the CPU is the bottleneck (a lower bound).",
    "Not included: the load balancer, NAT, storage, the system nodes and the cluster's own controllers, and the "
    "idle share of nodes (myelin:api_idle_cost_dollars_per_hour in the cluster).",
)


class CostConfigError(ValueError):
    """A stack file the estimate cannot use: names the file and the field."""


@dataclass(frozen=True)
class NodePrice:
    instance_type: str
    region: str
    hourly: float  # on-demand, the whole node
    vcpus: int
    memory_gib: float
    gpus: int
    cpu_hourly: float  # per vCPU
    ram_hourly: float  # per GiB
    gpu_hourly: float  # per GPU


def opencost_split(total: float, vcpus: float, memory_gib: float, gpus: float) -> tuple[float, float, float]:
    """(per vCPU, per GiB, per GPU) hourly prices that add up to `total`, in OpenCost's default ratios."""
    cpu_to_ram = OPENCOST_CPU / OPENCOST_RAM
    gpu_to_ram = OPENCOST_GPU / OPENCOST_RAM if gpus else 0.0
    ram = total / (gpus * gpu_to_ram + vcpus * cpu_to_ram + memory_gib)
    return ram * cpu_to_ram, ram, ram * gpu_to_ram


def node_price(instance_type: str, region: str) -> NodePrice:
    prices = ec2_prices.ON_DEMAND.get(region)
    if prices is None:
        raise CostConfigError(f"no prices for region {region} in the pinned table (myelin/ec2_prices.py, "
                              f"regions: {', '.join(sorted(ec2_prices.ON_DEMAND))}): add it with scripts/refresh_prices.py "
                              "--region")
    if instance_type not in prices or instance_type not in ec2_prices.INSTANCES:
        raise CostConfigError(f"no price for {instance_type} in {region} in the pinned table (myelin/ec2_prices.py): "
                              "add it with scripts/refresh_prices.py --instance-type")
    vcpus, memory_gib, gpus = ec2_prices.INSTANCES[instance_type]
    total = prices[instance_type]
    cpu, ram, gpu = opencost_split(total, vcpus, memory_gib, gpus)
    return NodePrice(instance_type, region, total, vcpus, memory_gib, gpus, cpu, ram, gpu)


@dataclass(frozen=True)
class Placement:
    """Where the stack would run one replica of the API, and what the replica requests."""

    stack_file: str
    node: NodePrice
    pool: str  # cpu_nodes | gpu_nodes
    spot: bool  # the pool has a spot node group the autoscaler prefers
    cpu: float  # cores requested
    memory_gib: float
    gpus: int
    deployed: bool  # the stack deploys this API folder (else: the folder's own api.yaml, the stack's pool)


def _field(data: Mapping[str, Any], key: str, source: str, field: str) -> Any:
    value = data.get(key)
    if value is not None and not isinstance(value, Mapping):
        raise CostConfigError(f"{source}: {field}: expected a mapping")
    return value or {}


def resolve_stack_file(stack: str, search: list[Path]) -> Path:
    """`dev` -> the first `Pulumi.dev.yaml` in `search` (and their parents); a path is taken as it is."""
    if stack.endswith((".yaml", ".yml")) or os.sep in stack:
        path = Path(stack).expanduser()
        if not path.is_file():
            raise CostConfigError(f"--stack {stack}: no such file")
        return path.resolve()
    name = f"Pulumi.{stack}.yaml"
    seen = []
    for start in search:
        for folder in [start.resolve(), *start.resolve().parents]:
            if (folder / name).is_file():
                return folder / name
            seen.append(str(folder))
    raise CostConfigError(f"--stack {stack}: no {name} in {', '.join(dict.fromkeys(seen[:4]))} or their parents")


def check_stack_file(stack_file: Path) -> None:
    """At start-up: the file reads, names its region, and its node pools' first instance types are priced."""
    try:
        doc = yaml.safe_load(stack_file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise CostConfigError(f"{stack_file}: cannot read: {err}") from None
    config = _field(doc, "config", str(stack_file), "config")
    region = config.get("aws:region")
    if not isinstance(region, str) or not region:
        raise CostConfigError(f"{stack_file}: aws:region: required (the region whose prices apply)")
    cluster = _field(config, "myelin:cluster", str(stack_file), "myelin:cluster")
    for key in ("cpu_nodes", "gpu_nodes"):
        pool = _field(cluster, key, str(stack_file), f"myelin:cluster.{key}")
        types = pool.get("instance_types") or (list(DEFAULT_CPU_INSTANCE_TYPES) if key == "cpu_nodes" else [])
        if types:
            try:
                node_price(str(types[0]), region)
            except CostConfigError as err:
                raise CostConfigError(f"{stack_file}: myelin:cluster.{key}.instance_types: {err}") from None


def read_placement(stack_file: Path, folder: Path, spec: Any) -> Placement:
    """The stack's region, node pool and overrides for the API in `folder` (a tiny reader of the stack file)."""
    source = str(stack_file)
    try:
        doc = yaml.safe_load(stack_file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise CostConfigError(f"{source}: cannot read: {err}") from None
    config = _field(doc, "config", source, "config")
    region = config.get("aws:region")
    if not isinstance(region, str) or not region:
        raise CostConfigError(f"{source}: aws:region: required (the region whose prices apply)")
    cluster = _field(config, "myelin:cluster", source, "myelin:cluster")
    apis = _field(config, "myelin:apis", source, "myelin:apis")
    deployed = folder.name in apis
    if deployed:
        selection = _field(apis, folder.name, source, f"myelin:apis.{folder.name}")
        overrides = _field(selection, "overrides", source, f"myelin:apis.{folder.name}.overrides")
        if overrides:
            try:
                spec = load_api_spec(folder, overrides, f"{source} (myelin:apis.{folder.name}.overrides)")
            except SpecError as err:
                raise CostConfigError(str(err)) from None
    compute = spec.compute
    pool_key = "gpu_nodes" if compute.gpu else "cpu_nodes"
    pool = _field(cluster, pool_key, source, f"myelin:cluster.{pool_key}")
    if compute.gpu and not pool:
        raise CostConfigError(f"{source}: myelin:cluster.gpu_nodes: {spec.name} needs a GPU and the stack has no GPU pool")
    types = pool.get("instance_types") or (list(DEFAULT_CPU_INSTANCE_TYPES) if pool_key == "cpu_nodes" else [])
    if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
        raise CostConfigError(f"{source}: myelin:cluster.{pool_key}.instance_types: expected a list of instance types")
    try:
        node = node_price(types[0], region)
    except CostConfigError as err:
        raise CostConfigError(f"{source}: myelin:cluster.{pool_key}.instance_types: {err}") from None
    return Placement(
        stack_file=source, node=node, pool=pool_key, spot=bool(pool.get("spot", True)),
        cpu=parse_cpu(compute.cpu), memory_gib=parse_memory(compute.mem) / 2**30, gpus=compute.gpu, deployed=deployed,
    )


def money(x: float) -> str:
    """$1,234 / $12.34 / $0.41 / $0.0053: two significant digits below a dollar."""
    if x >= 100:
        return f"${x:,.0f}"
    return f"${x:.2f}" if x >= 1 else f"${x:.2g}"


def estimate(cpu_seconds_per_prediction: float, p: Placement) -> dict[str, Any]:
    """Dollars per 1M predictions for one replica of the API on the stack's node, busy at its CPU request."""
    n = p.node
    hourly = {"cpu": p.cpu * n.cpu_hourly, "memory": p.memory_gib * n.ram_hourly, "gpu": p.gpus * n.gpu_hourly}
    total = sum(hourly.values())
    per_second = p.cpu / cpu_seconds_per_prediction
    per_million = 1e6 * total / (3600 * per_second)
    spot = [per_million * SPOT_SHARE[0], per_million * SPOT_SHARE[1]] if p.spot else None
    text = f"≈ {money(per_million)} per 1M predictions on {n.instance_type}"
    text += " (on-demand" + (f"; spot ≈ {money(spot[0])}–{money(spot[1])})" if spot else ")")
    return {
        "text": text,
        "per_million_dollars": per_million,
        "spot_per_million_dollars": spot,
        "instance_type": n.instance_type, "region": n.region, "pool": p.pool, "spot_pool": p.spot,
        "stack_file": p.stack_file, "in_stack": p.deployed,
        "replica": {"cpu": p.cpu, "memory_gib": p.memory_gib, "gpus": p.gpus,
                    "predictions_per_second": per_second,
                    "hourly_dollars": {**hourly, "total": total}},
        "node": {"hourly_dollars": n.hourly, "vcpus": n.vcpus, "memory_gib": n.memory_gib, "gpus": n.gpus,
                 "cpu_hourly_dollars": n.cpu_hourly, "ram_hourly_dollars": n.ram_hourly,
                 "gpu_hourly_dollars": n.gpu_hourly},
        "prices": {"as_of": ec2_prices.AS_OF, "source": ec2_prices.SOURCE},
        "assumptions": [a.format(as_of=ec2_prices.AS_OF, lo=SPOT_SHARE[0], hi=SPOT_SHARE[1]) for a in ASSUMPTIONS],
    }


def _count(counter: Any, api: str, statuses: Any) -> float:
    """This process's count of `counter` for `api` over the statuses `statuses(status) -> bool` accepts."""
    total = 0.0
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get(c.LABEL_API) == api \
                    and statuses(sample.labels.get(c.LABEL_STATUS, "")):
                total += sample.value
    return total


def answered(runtime: Any, metrics: Any) -> float:
    """Predictions `runtime` answered in this process: 2xx responses, or an AsyncAPI's completed jobs."""
    if getattr(runtime, "asynchronous", False):
        from .asyncapi.metrics import _for

        return _count(_for(metrics)[1], runtime.name, lambda s: s == c.JOB_COMPLETED)
    metrics.fold()  # requests answered since the last scrape (metrics.py)
    return _count(metrics.requests, runtime.name, lambda s: s.startswith("2"))


class CostMeter:
    """CPU seconds per answered prediction for each API of this process, and the stack's estimate."""

    def __init__(self, stack_file: Path | None = None, clock: Any = time.process_time):
        self.stack_file = stack_file
        self.clock = clock
        self._cpu_since: float | None = None  # process CPU seconds when the first API finished loading
        self._since: dict[str, tuple[Any, float]] = {}  # api -> (runtime, its predictions at load)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "CostMeter":
        raw = environ.get(COST_STACK_ENV, "").strip()
        return cls(Path(raw) if raw else None)

    def loaded(self, runtime: Any, metrics: Any) -> None:
        """The API finished loading: count its predictions, and this process's CPU, from here."""
        if self._cpu_since is None:
            self._cpu_since = self.clock()
        self._since[runtime.name] = (runtime, answered(runtime, metrics))

    def describe(self, runtime: Any, metrics: Any) -> dict[str, Any]:
        if runtime.name not in self._since or self._cpu_since is None:
            return {"measured": False, "note": "measured once the API has loaded"}
        cpu = self.clock() - self._cpu_since
        counts = {name: answered(r, metrics) - base for name, (r, base) in self._since.items()}
        own, total = counts[runtime.name], sum(counts.values())
        out: dict[str, Any] = {"measured": True, "cpu_seconds": round(cpu, 6), "predictions": int(own),
                               "cpu_seconds_per_prediction": None}
        if own <= 0:
            out["note"] = "no prediction answered yet"
            return out
        # A process serving several APIs (not `myelin serve`, nor `myelin local`, which runs one per process)
        # shares its CPU among them in proportion to their predictions.
        per_prediction = cpu / total
        out["cpu_seconds_per_prediction"] = per_prediction
        if self.stack_file is not None:
            try:
                placement = read_placement(self.stack_file, Path(runtime.folder), runtime.spec)
                out["estimate"] = estimate(per_prediction, placement)
            except CostConfigError as err:
                out["error"] = str(err)
        return out
