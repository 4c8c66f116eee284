"""The stack configuration (`Pulumi.<stack>.yaml`, namespace `myelin:`) as one strict pydantic model.

`load_stack_config` reads every `myelin:` key once, validates it, then parses every selected
API folder (with the stack's overrides) through `myelin.spec.load_api_spec`. Any problem raises
`StackConfigError` or `myelin.spec.SpecError` before a single resource is registered, naming the
stack file (or API folder) and the field.
"""

from __future__ import annotations

import ipaddress
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from myelin.spec import ApiSpec, SpecError, check_unique, load_api_spec, parse_model_uri, validation_problems
from myelin.contract import PROTOCOL_MYELIN
from myelin.spec.protocols import protocols_of
from myelin.spec.splitter import TrafficSplitterSpec, check_splitters

from . import capacity, gpu
from .observability.cost import CostConfig
from .observability.rules import AlertsConfig
from .versions import KUBERNETES_VERSION

NAMESPACE = "myelin"
REPO_ROOT = Path(__file__).resolve().parent.parent


class StackConfigError(ValueError):
    """Bad stack config: names the stack file and the `myelin:` key path of every problem."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {field}: {msg}" if field else f"{source}: {msg}" for field, msg in problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as err:
        raise ValueError(f"not a CIDR block: {err}") from None


#: RFC 5737 documentation ranges: placeholders in examples, never anyone's network.
DOCUMENTATION_RANGES = tuple(ipaddress.ip_network(c) for c in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"))


def _not_documentation(cidrs: list[str], what: str) -> list[str]:
    for c in cidrs:
        net = ipaddress.ip_network(c)
        if any(net.version == doc.version and net.subnet_of(doc) for doc in DOCUMENTATION_RANGES):
            raise ValueError(
                f"{c} is a documentation range (RFC 5737), a placeholder, not your network: put the egress CIDRs "
                f"of {what} here (`curl -s https://checkip.amazonaws.com` prints this machine's address; add /32)"
            )
    return cidrs


class ExistingVpc(_Strict):
    """Use this VPC instead of creating one: the internal load balancer subnets must hold nothing else (API pods
    admit their addresses), and the load balancers are pinned to the given subnets."""

    vpc_id: str = Field(..., pattern=r"^vpc-[0-9a-f]+$", description="The VPC's id.")
    vpc_cidr: str = Field(..., description="The VPC's CIDR (who may call internal APIs).")
    public_subnet_ids: list[str] = Field(..., min_length=2, description="Internet-facing load balancers live here.")
    public_subnet_cidrs: list[str] = Field(
        ..., min_length=2, description="Their CIDRs: API pods admit public load balancers from these only.")
    private_subnet_ids: list[str] = Field(..., min_length=2, description="Nodes live here.")
    internal_lb_subnet_ids: list[str] = Field(
        ..., min_length=2, description="Subnets that hold only internal load balancers (no nodes, no pods).")
    internal_lb_subnet_cidrs: list[str] = Field(
        ..., min_length=2, description="Their CIDRs: API pods admit internal load balancers from these only.")

    _cidr_ok = field_validator("vpc_cidr")(_cidr)

    @field_validator("public_subnet_cidrs", "internal_lb_subnet_cidrs")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        return [_cidr(c) for c in v]


class NetworkConfig(_Strict):
    """The VPC: public subnets (internet-facing load balancers, NAT), private subnets (nodes and pods) and small
    internal-load-balancer subnets."""

    vpc_cidr: str = Field("10.0.0.0/16", description="CIDR of the new VPC (/16 to /20).")
    az_count: int = Field(2, ge=2, le=6, description="Availability zones (2 to 6) with one public and one private subnet each.")
    nat: Literal["none", "single", "per_az"] = Field(
        "single",
        description="Private subnets' egress: `none` (VPC endpoints only: ECR, S3, STS, logs, EC2, ELB, autoscaling, "
        "EKS, and SQS when the stack has an AsyncAPI; Helm charts and base images must then be mirrored), `single` NAT "
        "gateway, or one `per_az` (survives an AZ outage).",
    )
    existing: ExistingVpc | None = Field(None, description="Use this VPC and its subnets instead of creating one.")

    _cidr_ok = field_validator("vpc_cidr")(_cidr)

    @field_validator("vpc_cidr")
    @classmethod
    def _size(cls, v: str) -> str:
        net = ipaddress.ip_network(v)
        if not 16 <= net.prefixlen <= 20:
            raise ValueError(f"use a /16 to /20 block (subnets are carved from it), got /{net.prefixlen}")
        return v


class NodePoolConfig(_Strict):
    """A node pool: with `spot`, a spot group the cluster-autoscaler prefers plus an on-demand fallback group
    holding `on_demand_base` nodes."""

    instance_types: list[str] = Field(..., min_length=1, description="EC2 instance types, most preferred first.")
    min_size: int = Field(0, ge=0, le=1000, description="Nodes kept even when idle (spread over spot and on-demand).")
    max_size: int = Field(..., ge=1, le=1000, description="Most nodes the cluster-autoscaler may start.")
    spot: bool = Field(True, description="Add a spot node group the autoscaler prefers; on-demand is the fallback.")
    on_demand_base: int = Field(0, ge=0, le=1000, description="On-demand nodes always kept (the reliable floor).")
    disk_size_gib: int = Field(50, ge=20, le=16384, description="Each node's root volume, which holds container "
                               "images and pods' ephemeral storage.")

    @model_validator(mode="after")
    def _bounds(self) -> "NodePoolConfig":
        if self.min_size > self.max_size:
            raise ValueError(f"min_size ({self.min_size}) is greater than max_size ({self.max_size})")
        if self.on_demand_base > self.max_size:
            raise ValueError(f"on_demand_base ({self.on_demand_base}) is greater than max_size ({self.max_size})")
        return self


class GpuNodePoolConfig(NodePoolConfig):
    """GPU capacity: nodes are tainted `nvidia.com/gpu=true:NoSchedule` and scale to zero when `min_size` is 0. The
    instance types are split into one spot/on-demand pair of groups per GPU model (g4dn T4, g5 A10G, g6 L4, g6e L40S,
    p3 V100, p4d A100, p5 H100...), each labelled `k8s.amazonaws.com/accelerator` so the cluster-autoscaler knows a
    new node's GPUs are coming; floors go to the first model listed. Absent: no GPU APIs possible."""

    ami_type: Literal["AL2023_x86_64_NVIDIA", "BOTTLEROCKET_x86_64_NVIDIA"] = Field(
        "AL2023_x86_64_NVIDIA", description="The NVIDIA AMI of the GPU nodes.")
    disk_size_gib: int = Field(100, ge=40, le=16384, description="The volume that holds container images "
                               "(on Bottlerocket the second, data volume).")

    @field_validator("instance_types")
    @classmethod
    def _nvidia(cls, v: list[str]) -> list[str]:
        for itype in v:
            gpu.accelerator(itype)  # ValueError naming the type and the known families
        return v


class CiAccessConfig(_Strict):
    """The GitHub Actions roles (docs/cicd.md) and what they may do in the cluster (EKS access entries)."""

    deploy_role_arn: str | None = Field(
        None, pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+", description="Runs `pulumi up`: cluster admin.")
    preview_role_arn: str | None = Field(
        None, pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+",
        description="Runs `pulumi preview`: read-only, Secrets included (Helm keeps releases in Secrets).")


class SystemNodesConfig(_Strict):
    """The fixed on-demand group that runs the controllers."""

    instance_type: str = Field("t3.medium", description="EC2 instance type of the system nodes.")
    size: int = Field(2, ge=1, le=10, description="On-demand nodes for the controllers (fixed size).")


class ExistingCluster(_Strict):
    """Deploy only the add-ons and APIs onto this cluster (set the kubeconfig with `pulumi config set --secret`)."""

    kubeconfig: str = Field(..., description="Kubeconfig (JSON or YAML) of the cluster; set it as a secret.")
    cluster_name: str = Field(..., description="The EKS cluster's name.")
    oidc_provider_arn: str = Field(..., pattern=r"^arn:aws[a-z-]*:iam::\d{12}:oidc-provider/.+",
                                   description="ARN of the cluster's IAM OIDC provider (IRSA roles trust it).")
    oidc_provider_url: str = Field(..., description="The cluster's OIDC issuer URL.")
    vpc_id: str = Field(..., pattern=r"^vpc-[0-9a-f]+$", description="The cluster's VPC.")
    vpc_cidr: str = Field(..., description="That VPC's CIDR.")

    _cidr_ok = field_validator("vpc_cidr")(_cidr)


class ClusterConfig(_Strict):
    """The EKS cluster: its Kubernetes API, access, logs and node pools."""

    version: str = Field(KUBERNETES_VERSION, pattern=r"^1\.\d{2}$", description="EKS Kubernetes version.")
    endpoint_public_access_cidrs: list[str] = Field(
        default_factory=list,
        description="CIDRs allowed to reach the Kubernetes API (every machine that runs Pulumi, CI runners "
        "included); empty = private endpoint only (`0.0.0.0/0` and the RFC 5737 documentation ranges are refused).",
    )
    admin_principal_arns: list[str] = Field(default_factory=list, description="IAM roles/users given cluster-admin through "
                                                  "EKS access entries.")
    ci_access: CiAccessConfig = Field(default_factory=CiAccessConfig, description="EKS access entries for the CI "
                                      "roles (deploy: cluster admin; preview: `AmazonEKSAdminViewPolicy`), see CI/CD.")
    log_types: list[Literal["api", "audit", "authenticator", "controllerManager", "scheduler"]] = Field(
        default_factory=lambda: ["api", "audit", "authenticator"],
        description="Control-plane logs shipped to CloudWatch.",
    )
    deletion_protection: bool = Field(False, description="Refuse to delete the cluster.")
    system_nodes: SystemNodesConfig = Field(default_factory=SystemNodesConfig)
    cpu_nodes: NodePoolConfig = Field(
        default_factory=lambda: NodePoolConfig(instance_types=["m6i.large", "m5.large"], max_size=10),
        description="CPU capacity for the APIs.",
    )
    gpu_nodes: GpuNodePoolConfig | None = Field(None, description="GPU capacity; absent = no GPU APIs possible.")
    existing: ExistingCluster | None = Field(None, description="Deploy add-ons and APIs onto this cluster instead.")

    @field_validator("endpoint_public_access_cidrs")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        out = [_cidr(c) for c in v]
        for c in out:
            if ipaddress.ip_network(c).prefixlen == 0:
                raise ValueError("0.0.0.0/0 opens the Kubernetes API to the internet: list your office/VPN CIDRs")
        return _not_documentation(out, "the machines that run pulumi (your office or VPN, the CI runners: "
                                       "docs/cicd.md), or [] for a private endpoint reached from inside the VPC")


class IngressConfig(_Strict):
    """The shared Application Load Balancers (one per visibility: public, internal)."""

    certificate_arn: str | None = Field(
        None, pattern=r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/.+", description="ACM certificate: HTTPS on 443 and HTTP redirected to HTTPS; none: HTTP only."
    )
    domain: str | None = Field(None, description="DNS name you point (CNAME/alias) at the "
                                 "public load balancer; used in `endpoints`.")
    idle_timeout_seconds: int = Field(
        120, ge=1, le=4000, description="Load balancer idle timeout; must exceed every RealtimeAPI's `serving.timeout` "
        "(by 10s for one scaled to zero), which the stack config checks (an AsyncAPI's jobs do not run on the "
        "connection).")
    ssl_policy: str = Field("ELBSecurityPolicy-TLS13-1-2-2021-06", description="TLS policy of the HTTPS listener.")
    public_source_cidrs: list[str] = Field(
        default_factory=lambda: ["0.0.0.0/0"], description="Who may call public APIs through the "
                                                  "load balancer (documentation ranges are refused)."
    )

    @field_validator("public_source_cidrs")
    @classmethod
    def _sources(cls, v: list[str]) -> list[str]:
        return _not_documentation([_cidr(c) for c in v], "the clients allowed to call public APIs, or 0.0.0.0/0 for all")

    @model_validator(mode="after")
    def _domain_needs_cert(self) -> "IngressConfig":
        if self.domain and not self.certificate_arn:
            raise ValueError("domain is set but certificate_arn is not: the URL would be https without a certificate")
        return self


#: A KMS key's ARN (not an alias: IAM grants on a key name its key ARN).
KMS_KEY_ARN = r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]+$"


class ApiSelection(_Strict):
    """One API folder (under `apis_dir`) this stack deploys: `my-api: {}`, or with overrides."""

    overrides: dict[str, Any] = Field(default_factory=dict, description="`api.yaml` fields to replace "
                                       "for this stack, e.g. `{autoscaling: {min_replicas: 2}}`.")
    model_kms_key_arn: str | None = Field(
        None, pattern=KMS_KEY_ARN,
        description="The customer-managed KMS key the s3:// model's objects are encrypted with (SSE-KMS): the API's "
                    "role may then kms:Decrypt with it, through S3 and for the model's objects only.")


class GrafanaConfig(_Strict):
    """Grafana with Myelin's dashboards."""

    enabled: bool = Field(True, description="Install Grafana with Myelin's dashboards (reach it by port-forward).")


class ObservabilityConfig(_Strict):
    """Logs, metrics, dashboards, alerts and cost (see Observability)."""

    log_retention_days: Literal[1, 3, 5, 7, 14, 30, 60, 90, 180, 365] = Field(
        14, description="CloudWatch retention of container logs.")
    prometheus_retention: str = Field("2d", pattern=r"^\d+[hdw]$", description="In-cluster Prometheus retention "
                                      "(autoscaling data; no persistent volume).")
    grafana: GrafanaConfig = Field(default_factory=GrafanaConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig, description="Alert thresholds and receiver.")
    cost: CostConfig = Field(default_factory=CostConfig, description="OpenCost and what each API costs.")

    @model_validator(mode="after")
    def _cost_alert_needs_opencost(self) -> "ObservabilityConfig":
        a = self.alerts
        if not self.cost.enabled and (a.cost_per_million_predictions_dollars or a.cost_per_million_predictions_dollars_by_api):
            raise ValueError("alerts.cost_per_million_predictions_dollars needs cost.enabled (OpenCost prices the APIs)")
        return self


class PodConfig(_Strict):
    """Timings of the API pods: how they stop, and how long `pulumi up` waits for them (node + image pull + model
    load per Deployment, at least 20 minutes for a GPU API)."""

    pre_stop_seconds: int = Field(
        10, ge=0, le=120, description="Pause before SIGTERM so the load balancer deregisters the pod first."
    )
    startup_timeout_seconds: int = Field(600, ge=10, le=3600, description="Longest a model may take to load.")
    cpu_node_wait_seconds: int = Field(300, ge=0, le=3600, description="Time for a new CPU node to join.")
    gpu_node_wait_seconds: int = Field(600, ge=0, le=3600, description="Time for a new GPU node to join.")
    cpu_image_pull_seconds: int = Field(300, ge=0, le=3600, description="Time to pull a CPU image.")
    gpu_image_pull_seconds: int = Field(900, ge=0, le=3600, description="Time to pull a (multi-GB) CUDA image.")

    def rollout_seconds(self, gpu: bool) -> int:
        """How long `pulumi up` waits for a Deployment's new pods: a node, the image, the model load.

        A GPU API gets at least 20 minutes: a GPU node from zero, a CUDA image and a model load add up.
        """
        if gpu:
            return max(20 * 60, self.gpu_node_wait_seconds + self.gpu_image_pull_seconds + self.startup_timeout_seconds)
        return self.cpu_node_wait_seconds + self.cpu_image_pull_seconds + self.startup_timeout_seconds


class StackConfig(_Strict):
    """Every `myelin:` key of a stack file."""

    stack: str = Field(..., description="The stack's name (from Pulumi, not the stack file).")
    region: str = Field(..., description="`aws:region` (from Pulumi's `aws` namespace).")
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    ingress: IngressConfig = Field(default_factory=IngressConfig)
    observability: ObservabilityConfig = Field(default_factory=ObservabilityConfig)
    pods: PodConfig = Field(default_factory=PodConfig)
    apis: dict[str, ApiSelection] = Field(..., min_length=1, description="API folders (under `apis_dir`) to deploy, "
                                          "each with its overrides.")
    apis_dir: str = Field("apis", description="Folder holding the API folders.")

    @field_validator("apis", mode="before")
    @classmethod
    def _none_is_empty(cls, v: Any) -> Any:
        if isinstance(v, Mapping):
            return {k: ({} if s is None else s) for k, s in v.items()}
        return v


#: The `myelin:` keys a stack file may set (anything else is a typo and is refused).
KNOWN_KEYS = ("network", "cluster", "ingress", "observability", "pods", "apis", "apis_dir", "api_keys")


@dataclass(frozen=True)
class DeployedApi:
    folder: Path
    spec: ApiSpec
    #: myelin:apis.<folder>.model_kms_key_arn: the key of an s3:// model under SSE-KMS, if any.
    model_kms_key_arn: str | None = None


@dataclass(frozen=True)
class DeployedSplitter:
    """A `kind: TrafficSplitter` this stack deploys: an Ingress rule on the shared ALB weighing its APIs
    (components/apis/splitter.py); its APIs are deployed APIs of the same stack."""

    folder: Path
    spec: TrafficSplitterSpec


@dataclass(frozen=True)
class Settings:
    """Everything the program needs, parsed once."""

    config: StackConfig
    apis: tuple[DeployedApi, ...]
    api_keys: Mapping[str, str]  # API name -> comma-separated keys (from the secret `myelin:api_keys`)
    splitters: tuple[DeployedSplitter, ...] = ()

    def aliases_of(self, api: str) -> tuple[tuple[str, str], ...]:
        """(splitter, endpoint) of every splitter weighing `api`: the paths its pods also answer on."""
        return tuple((s.spec.name, s.spec.endpoint) for s in self.splitters
                     if any(t.name == api for t in s.spec.weighted))

    def shadows_of(self, api: str) -> tuple[tuple[str, ApiSpec], ...]:
        """(splitter, its shadow's spec) of every splitter weighing `api` that has a shadow: its pods copy each
        request they answer on that splitter's path to the shadow's Service (MYELIN_SHADOW_TARGETS)."""
        specs = {d.spec.name: d.spec for d in self.apis}
        return tuple((s.spec.name, specs[s.spec.shadow.name]) for s in self.splitters
                     if s.spec.shadow is not None and any(t.name == api for t in s.spec.weighted))

    def shadow_sources_of(self, api: str) -> tuple[ApiSpec, ...]:
        """The APIs whose pods copy requests to `api`'s (it is the shadow of splitters weighing them): its
        NetworkPolicy admits them."""
        specs = {d.spec.name: d.spec for d in self.apis}
        names = {t.name for s in self.splitters if s.spec.shadow is not None and s.spec.shadow.name == api
                 for t in s.spec.weighted}
        return tuple(specs[n] for n in sorted(names))


def _problems(err: ValidationError, prefix: str = f"{NAMESPACE}:") -> list[tuple[str, str]]:
    return [(prefix + field if field else prefix.rstrip(":"), msg) for field, msg in validation_problems(err)]


def parse_stack_config(raw: Mapping[str, Any], stack: str, region: str, source: str) -> StackConfig:
    unknown = sorted(set(raw) - set(KNOWN_KEYS))
    if unknown:
        raise StackConfigError(
            source, [(f"{NAMESPACE}:{k}", f"unknown key (known: {', '.join(KNOWN_KEYS)})") for k in unknown]
        )
    data = {k: v for k, v in raw.items() if k != "api_keys"}
    try:
        return StackConfig.model_validate({**data, "stack": stack, "region": region})
    except ValidationError as err:
        raise StackConfigError(source, _problems(err)) from None


#: HPA behavior's stabilizationWindowSeconds maximum (KEDA's ScaledObject CRD v2.20.2 carries the same bound).
HPA_MAX_STABILIZATION_S = 3600
#: For APIs scaled to zero: the interceptor's request deadline over serving.timeout (components/apis/scale_to_zero.py).
SCALE_TO_ZERO_SLACK_S = 10
#: An ALB target group's deregistration_delay.timeout_seconds is at most 3600 (an hour).
ALB_MAX_DEREGISTRATION_S = 3600
#: The interceptor's own shutdownDelay floor (the chart's default, 5s) and its margin for process exit.
INTERCEPTOR_MIN_SHUTDOWN_DELAY_S = 5
INTERCEPTOR_EXIT_MARGIN_S = 5


def held_request_seconds(spec: ApiSpec) -> int:
    """The longest a request to an API scaled to zero stays at the interceptor: held up to serving.timeout, and the
    route's request deadline (`timeouts.request`) is that plus the slack for the fallback's answer."""
    return math.ceil(spec.serving.timeout.seconds) + SCALE_TO_ZERO_SLACK_S


@dataclass(frozen=True)
class InterceptorTimings:
    """How an interceptor pod of KEDA's HTTP add-on stops without cutting a held request (chart keda-add-ons-http
    0.15.0, kedacore/charts c4b92e9 http-add-on/values.yaml: shutdownDelay, drainTimeout,
    terminationGracePeriodSeconds, which must be at least the first two together):

    SIGTERM -> `shutdown_delay_s` still accepting (readiness 503) while the ALB deregisters it (as an API pod's
    preStop pause) -> listener closed -> up to `drain_s` for the requests it holds, the longest a held request can
    last -> exit. The ALB's deregistration delay on the interceptor's target groups is the whole grace period,
    so the ALB never closes a connection the interceptor is still answering."""

    shutdown_delay_s: int
    drain_s: int

    @property
    def grace_s(self) -> int:
        return self.shutdown_delay_s + self.drain_s + INTERCEPTOR_EXIT_MARGIN_S

    @property
    def deregistration_delay_s(self) -> int:
        return self.grace_s


def interceptor_timings(specs: list[ApiSpec], pods: "PodConfig") -> InterceptorTimings:
    """The timings that cover every API of the stack scaled to zero (one interceptor fleet holds them all)."""
    return InterceptorTimings(shutdown_delay_s=max(pods.pre_stop_seconds, INTERCEPTOR_MIN_SHUTDOWN_DELAY_S),
                              drain_s=max(held_request_seconds(s) for s in specs))


def _realtime_problems(spec: ApiSpec, config: StackConfig) -> list[tuple[str, str]]:
    """A RealtimeAPI's autoscaling windows and serving.timeout against the cloud's limits."""
    problems = []
    a = spec.autoscaling
    for field_name in ("upscale_stabilization", "downscale_stabilization"):
        if getattr(a, field_name).seconds > HPA_MAX_STABILIZATION_S:
            problems.append((f"autoscaling.{field_name}", f"at most {HPA_MAX_STABILIZATION_S // 60}m in the cloud "
                             "(the HPA's stabilizationWindowSeconds limit)"))
    # The ALB closes a connection on which nothing was sent for its idle timeout: it must outlast the longest
    # silence the API allows (serving.timeout: a prediction's deadline, a stream's gap between two items), so
    # the client gets the API's own answer (a JSON 504 or the next item) and never the ALB's HTML 504. An API
    # scaled to zero is also held by the interceptor for up to serving.timeout while it starts.
    if a.min_replicas == 0:
        # A held request must end within an interceptor's drain, which the ALB's deregistration delay must cover.
        timings = interceptor_timings([spec], config.pods)
        if timings.deregistration_delay_s > ALB_MAX_DEREGISTRATION_S:
            longest = ALB_MAX_DEREGISTRATION_S - (timings.grace_s - math.ceil(spec.serving.timeout.seconds))
            problems.append(("serving.timeout", (
                f"{spec.serving.timeout} with autoscaling.min_replicas 0: a request is held at the interceptor for up "
                f"to serving.timeout (+{SCALE_TO_ZERO_SLACK_S}s), and a stopping interceptor drains it for that long "
                f"after {timings.shutdown_delay_s}s ({NAMESPACE}:pods.pre_stop_seconds), all within the load "
                f"balancer's deregistration delay, at most {ALB_MAX_DEREGISTRATION_S}s: use at most {longest}s, or "
                "min_replicas 1 (docs/scale-to-zero.md)")))
    need = math.ceil(spec.serving.timeout.seconds) + (SCALE_TO_ZERO_SLACK_S if a.min_replicas == 0 else 1)
    if config.ingress.idle_timeout_seconds < need:
        why = ("a request is held while the API scales from zero for up to serving.timeout"
               if a.min_replicas == 0 else
               "a prediction may take, and a stream may pause between items, up to serving.timeout")
        problems.append(("serving.timeout", (
            f"{spec.serving.timeout}{' with autoscaling.min_replicas 0' if a.min_replicas == 0 else ''}: {why}, "
            f"so {NAMESPACE}:ingress.idle_timeout_seconds must be at least {need} (it is "
            f"{config.ingress.idle_timeout_seconds}), or the load balancer answers 504 first")))
    return problems


def resolve_apis(config: StackConfig, source: str, repo_root: Path = REPO_ROOT) -> tuple[DeployedApi, ...]:
    return resolve_stack_apis(config, source, repo_root)[0]


def _splitter_problems(splitter: TrafficSplitterSpec, apis: Mapping[str, ApiSpec]) -> list[tuple[str, str]]:
    """What the cloud cannot do for a splitter the tree accepts (check_splitters has run): an API that does not
    answer `POST <endpoint>`, and weighted APIs behind another load balancer.

    A shadow is copied to by the weighted APIs' pods, inside the cluster (MYELIN_SHADOW_TARGETS, its Service and
    endpoint: docs/traffic-splitting.md), so its visibility does not matter; it must answer the native protocol."""
    problems = []
    for i, target in enumerate(splitter.apis):
        spec = apis[target.name]
        if PROTOCOL_MYELIN not in protocols_of(spec):
            role = "its shadow, copied to at" if target.shadow else "its weighted APIs, answering the splitter's path as"
            problems.append((f"apis[{i}].name", (
                f"{target.name!r} does not speak the myelin protocol (networking.protocols: "
                f"{', '.join(protocols_of(spec))}): a splitter's requests reach {role} `POST <endpoint>`; add "
                f"{PROTOCOL_MYELIN} to its networking.protocols")))
            continue
        if target.shadow:
            continue
        if spec.networking.visibility != splitter.networking.visibility:
            problems.append((f"apis[{i}].name", (
                f"{target.name!r} is {spec.networking.visibility} and the splitter {splitter.networking.visibility}: "
                "each visibility has its own load balancer, and a pod admits only its own; set the same "
                "networking.visibility on both")))
    return problems


def resolve_stack_apis(config: StackConfig, source: str, repo_root: Path = REPO_ROOT
                       ) -> tuple[tuple[DeployedApi, ...], tuple[DeployedSplitter, ...]]:
    """The stack's APIs and TrafficSplitters, each validated against the stack (myelin:apis)."""
    root = (repo_root / config.apis_dir).resolve()
    deployed: list[DeployedApi] = []
    splitters: list[DeployedSplitter] = []
    for folder_name, selection in config.apis.items():
        folder = root / folder_name
        if not (folder / "api.yaml").is_file():
            raise StackConfigError(
                source, [(f"{NAMESPACE}:apis.{folder_name}", f"no API folder with an api.yaml at {folder}")]
            )
        spec = load_api_spec(folder, selection.overrides, f"{source} (myelin:apis.{folder_name}.overrides)")
        if spec.kind == "TrafficSplitter":
            if selection.model_kms_key_arn is not None:
                raise StackConfigError(source, [(f"{NAMESPACE}:apis.{folder_name}.model_kms_key_arn", (
                    f"{spec.name} is a TrafficSplitter: it has no model (set the key on the APIs it weighs)"))])
            splitters.append(DeployedSplitter(folder=folder, spec=spec))
            continue
        problems = []
        if spec.compute.gpu and config.cluster.gpu_nodes is None and config.cluster.existing is None:
            problems.append(("compute.gpu", "the API needs GPUs but the stack has no myelin:cluster.gpu_nodes"))
        if spec.kind == "RealtimeAPI":
            # An AsyncAPI's gateway answers submit and status at once (the job runs in a worker, never on the
            # client's connection) and its workers scale on the queue without HPA windows: neither check applies.
            problems.extend(_realtime_problems(spec, config))
        problems.extend(_model_problems(spec, folder, config))
        problems.extend(_image_problems(folder))
        if problems:
            raise SpecError(f"{folder / 'api.yaml'} (stack {config.stack})", problems)
        key = selection.model_kms_key_arn
        if key is not None:
            uri = spec.predictor.model_uri
            if uri is None or not parse_model_uri(uri).is_s3:
                raise StackConfigError(source, [(f"{NAMESPACE}:apis.{folder_name}.model_kms_key_arn", (
                    f"API {spec.name} has no s3:// predictor.model_uri ({uri or 'none'}): there is no model for this "
                    "key to decrypt"))])
        deployed.append(DeployedApi(folder=folder, spec=spec, model_kms_key_arn=key))
    check_unique({**{d.folder: d.spec for d in deployed}, **{s.folder: s.spec for s in splitters}})
    names = {d.spec.name for d in deployed}
    by_name = {d.spec.name: d.spec for d in deployed}
    for splitter in splitters:
        spec = splitter.spec
        missing = [t.name for t in spec.apis if t.name not in by_name and t.name != spec.name
                   and t.name not in {s.spec.name for s in splitters}]
        if missing:
            # Every API of a splitter is deployed by the same stack: its pods answer the splitter's path.
            raise StackConfigError(source, [(f"{NAMESPACE}:apis", (
                f"TrafficSplitter {spec.name} ({splitter.folder / 'api.yaml'}) sends requests to "
                f"{', '.join(missing)}, which this stack does not deploy; add "
                f"{'its folder' if len(missing) == 1 else 'their folders'} to {NAMESPACE}:apis"))])
    # Names, kinds, canaries, scale to zero: as `myelin local` checks them, on the stack's effective specs.
    bad = check_splitters({**{d.folder: d.spec for d in deployed}, **{s.folder: s.spec for s in splitters}},
                          {s.folder: f"{s.folder / 'api.yaml'} (stack {config.stack})" for s in splitters})
    if bad:
        raise next(iter(bad.values()))
    for splitter in splitters:
        problems = _splitter_problems(splitter.spec, by_name)
        if problems:
            raise SpecError(f"{splitter.folder / 'api.yaml'} (stack {config.stack})", problems)
    for field_name in ("latency_p99_seconds_by_api", "cost_per_million_predictions_dollars_by_api"):
        unknown = sorted(set(getattr(config.observability.alerts, field_name)) - names)
        if unknown:
            raise StackConfigError(source, [
                (f"{NAMESPACE}:observability.alerts.{field_name}.{name}",
                 f"no deployed API is named {name!r} (deployed: {', '.join(sorted(names))})") for name in unknown])
    return tuple(deployed), tuple(splitters)


def _image_problems(folder: Path) -> list[tuple[str, str]]:
    """What would go into the API's image: a symlink out of the repository (or to nothing) is refused here, before
    any resource exists (components/image.py)."""
    from .image import ImageContextError, context_files  # image.py imports this module

    try:
        context_files(folder)
    except ImageContextError as err:
        return [("", f"{err} (the image holds the API folder's git-tracked files; docs/deploy-aws.md)")]
    return []


def _model_problems(spec: ApiSpec, folder: Path, config: StackConfig) -> list[tuple[str, str]]:
    """`predictor.model_uri` in the cloud: an s3:// model needs its volume (`compute.model_disk`), sized to fit a
    node; a local one must be in the image, i.e. git-tracked files inside the API folder (components/image.py)."""
    if spec.predictor.model_uri is None:
        return []
    uri = parse_model_uri(spec.predictor.model_uri)
    problems: list[tuple[str, str]] = []
    if uri.is_s3 and spec.kind != "RealtimeAPI":
        # The AsyncAPI worker has its job-store role only: no model role, cache volume or recorded version yet.
        return [("predictor.model_uri", (
            f"an s3:// model ({uri.raw}) is served from S3 in the cloud for kind RealtimeAPI only; for kind "
            f"{spec.kind} ship the model in the API folder (a local model_uri) or load it in __init__"))]
    if uri.is_s3:
        disk = spec.compute.model_disk_bytes
        if disk is None:
            problems.append(("compute.model_disk", (
                f"required with an s3:// predictor.model_uri ({uri.raw}): the size of the pod's own volume for the "
                "model cache, e.g. '2Gi' (at least the model's size; the cache may use all but 5% of it)")))
        elif config.cluster.existing is None:
            pool = config.cluster.gpu_nodes if spec.compute.gpu else config.cluster.cpu_nodes
            if pool is not None:
                kind = "gpu" if spec.compute.gpu else "cpu"
                ami = pool.ami_type if isinstance(pool, GpuNodePoolConfig) else "AL2023_x86_64_STANDARD"
                room = capacity.ephemeral_storage_gib(pool.disk_size_gib, ami, kind)
                if disk > room * 2**30:
                    problems.append(("compute.model_disk", (
                        f"{spec.compute.model_disk} does not fit on a node: {NAMESPACE}:cluster.{kind}_nodes.disk_size_gib "
                        f"is {pool.disk_size_gib}, of which pods get {room}Gi (the pod's volume lives on the node's "
                        "disk beside the OS and the images: components/capacity.py); the cluster autoscaler would "
                        "never add a node for it. Raise disk_size_gib or lower compute.model_disk")))
        return problems
    local = Path(uri.local_path or "").expanduser()
    target = local if local.is_absolute() else folder / local
    try:
        rel = target.resolve().relative_to(folder.resolve())
    except ValueError:
        return [("predictor.model_uri", (
            f"{uri.raw!r} is outside the API folder {folder}: only the API folder goes into the image. Move the "
            "files into the folder (and commit them), or upload them to S3 and use an s3:// URI")) ]
    from .image import context_files  # image.py imports this module

    prefix = rel.as_posix()
    files = context_files(folder)
    if not any(prefix in (".", f) or f.startswith(prefix + "/") for f in files):
        problems.append(("predictor.model_uri", (
            f"{uri.raw!r}: no file at {target} goes into the image, which holds the API folder's git-tracked files "
            "only: commit the model files (git add), or upload them to S3 and use an s3:// URI")))
    return problems


def parse_api_keys(raw: Any, apis: tuple[DeployedApi, ...], source: str) -> dict[str, str]:
    if raw is None:
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise StackConfigError(source, [(f"{NAMESPACE}:api_keys", "must be a mapping of API name to keys")]) from None
    if not isinstance(raw, Mapping):
        raise StackConfigError(source, [(f"{NAMESPACE}:api_keys", "must be a mapping of API name to keys")])
    names = {d.spec.name for d in apis}
    problems = []
    for name, keys in raw.items():
        if name not in names:
            problems.append((f"{NAMESPACE}:api_keys.{name}", "no deployed API has this name"))
        elif not isinstance(keys, str) or not all(k.strip() for k in keys.split(",")):
            problems.append((f"{NAMESPACE}:api_keys.{name}", "must be a comma-separated string of non-empty keys"))
    if problems:
        raise StackConfigError(source, problems)
    return dict(raw)


def load_settings(raw: Mapping[str, Any], stack: str, region: str, repo_root: Path = REPO_ROOT) -> Settings:
    """Validate stack config and every selected api.yaml; raises before anything is registered."""
    source = f"Pulumi.{stack}.yaml"
    if not region:
        raise StackConfigError(source, [("aws:region", "required: the AWS region to deploy to")])
    config = parse_stack_config(raw, stack, region, source)
    from .image import PREDICTOR_IMAGE_DIR, ImageContextError, context_files  # image.py imports this module

    try:
        context_files(PREDICTOR_IMAGE_DIR)  # the runtime's files go into every image
    except ImageContextError as err:
        raise StackConfigError(source, [("", str(err))]) from None
    apis, splitters = resolve_stack_apis(config, source, repo_root)
    keys = parse_api_keys(raw.get("api_keys"), apis, source)
    return Settings(config=config, apis=apis, api_keys=keys, splitters=splitters)


def read_pulumi_config() -> tuple[dict[str, Any], str, str]:
    """The raw `myelin:` map, the stack name and the AWS region from the running Pulumi program."""
    import pulumi

    cfg = pulumi.Config(NAMESPACE)
    raw: dict[str, Any] = {}
    for key in KNOWN_KEYS:
        value = cfg.get(key)
        if value is not None:
            try:
                raw[key] = json.loads(value)
            except json.JSONDecodeError:
                raw[key] = value
    # Unknown keys: Pulumi does not refuse them, so look at what the stack set.
    from pulumi.runtime import config as runtime_config

    all_keys = set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())
    for full_key in sorted(all_keys):
        ns, _, key = full_key.partition(":")
        if ns == NAMESPACE and key not in raw and key not in KNOWN_KEYS:
            raw[key] = runtime_config.get_config(full_key)
    region = pulumi.Config("aws").get("region") or ""
    return raw, pulumi.get_stack(), region
