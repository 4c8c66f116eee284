"""What every API kind shares in the cluster: labels, the pod template, the API-key Secret, the Service,
the PodDisruptionBudget, the NetworkPolicy and the Ingress on the stack's shared ALB.

One module per kind (realtime.py today) composes these; nothing here knows which kind it serves.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from myelin import contract
from myelin.contract import SPEC_ENV
from myelin.spec.protocols import protocols_of
from myelin.spec import ApiSpec

from ..cluster import CPU_NODE_SELECTOR, GPU_NODE_SELECTOR, GPU_TAINT_KEY
from ..config import IngressConfig, InterceptorTimings, PodConfig
from ..image import PredictorImage
from ..versions import CPU_BASE_IMAGE, CPU_TORCH_INDEX, GPU_BASE_IMAGE, GPU_TORCH_INDEX
from ..irsa import IrsaRole, irsa_role
from .model import MODEL_CACHE_DIR, MODEL_POLICY_PREFIX, MODEL_VOLUME, ResolvedModel

PORT = contract.CONTAINER_PORT
RUN_AS_USER = 10001
ALB = "alb.ingress.kubernetes.io/"
API_KEYS_VOLUME = "api-keys"
API_KEYS_FILE = "keys"
#: IRSA: the pod identity webhook gives pods whose ServiceAccount carries this annotation the role's web identity
#: (AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE and a projected token volume of its own).
ROLE_ARN_ANNOTATION = "eks.amazonaws.com/role-arn"
#: cluster-autoscaler never removes a node running a pod with a disk-backed emptyDir (or hostPath) unless the pod
#: names every such volume here (kubernetes/autoscaler cluster-autoscaler-1.34.1 cluster-autoscaler/FAQ.md, "What
#: types of pods can prevent CA from removing a node?"; utils/drain/drain.go HasBlockingLocalStorage: the value is
#: split on "," with no trimming, and an emptyDir of medium Memory is not local storage).
SAFE_TO_EVICT_LOCAL_VOLUMES = "cluster-autoscaler.kubernetes.io/safe-to-evict-local-volumes"


def scratch_volumes_annotation(volumes: list[k8s.core.v1.VolumeArgs]) -> dict[str, str]:
    """The annotation that lets the cluster autoscaler evict a pod whose only local storage is scratch: exactly
    its disk-backed emptyDirs (/tmp, the model cache), which a replacement pod rebuilds on any node."""
    names = [v.name for v in volumes
             if v.empty_dir is not None and getattr(v.empty_dir, "medium", None) != "Memory"]
    assert not any(getattr(v, "host_path", None) is not None for v in volumes), "hostPath is not scratch"
    return {SAFE_TO_EVICT_LOCAL_VOLUMES: ",".join(names)} if names else {}


@dataclass(frozen=True)
class PredictorApiArgs:
    spec: ApiSpec
    folder: Path
    stack: str
    namespace: pulumi.Input[str]
    prometheus_url: str
    prometheus_namespace: str
    prometheus_pod_labels: dict[str, str]
    ingress: IngressConfig
    pods: PodConfig
    #: visibility -> CIDRs of the subnets its load balancers live in (the only sources API pods admit besides Prometheus)
    load_balancer_cidrs: dict[str, list[str]]
    #: visibility -> subnet ids its load balancers are placed in
    load_balancer_subnets: dict[str, list[pulumi.Input[str]]]
    internal_source_cidrs: list[str]  # who may call internal APIs (the VPC)
    api_keys: pulumi.Input[str] | None = None  # comma-separated, secret
    node_pools: bool = True  # False on an existing cluster: no pool labels to select
    force_delete_images: bool = False
    #: Every Kubernetes object of the API is created after these (and deleted before them): the add-ons whose
    #: controllers act on the objects (load balancer controller, KEDA) and the namespace.
    after: list[pulumi.Resource] = field(default_factory=list)
    #: The API's s3:// model as the program found it (components/apis/model.py); None without one.
    model: ResolvedModel | None = None
    #: The cluster's OIDC provider: the API's own IAM role (IRSA) trusts it; needed with an s3:// model.
    oidc_provider_arn: pulumi.Input[str] | None = None
    oidc_provider_url: pulumi.Input[str] | None = None
    partition: str = "aws"  # of the ARNs in the model policy
    #: How the stack's interceptors stop (config.interceptor_timings); set when an API scales to zero.
    interceptor: InterceptorTimings | None = None
    #: Objects the API's InterceptorRoute comes after: the cold-start responder's Service it names as fallback.
    route_after: list[pulumi.Resource] = field(default_factory=list)
    #: (splitter, endpoint) of the TrafficSplitters weighing this API: paths its pods also answer on
    #: (MYELIN_ENDPOINT_ALIASES; components/apis/splitter.py).
    endpoint_aliases: tuple[tuple[str, str], ...] = ()
    #: (splitter, its shadow's spec) of the splitters weighing this API that have a shadow: its pods copy each
    #: request answered on that splitter's path to the shadow's Service (MYELIN_SHADOW_TARGETS; realtime.py).
    shadow_targets: tuple[tuple[str, ApiSpec], ...] = ()
    #: The APIs whose pods copy requests to this one (it is their splitters' shadow): its NetworkPolicy admits them.
    shadow_sources: tuple[ApiSpec, ...] = ()


@dataclass(frozen=True)
class IngressBackend:
    """An Ingress backend other than the API's own Service: a Service in another namespace, by port number."""

    namespace: str
    service: str
    port: int
    annotations: dict[str, str]
    suffix: str = ""


def api_image(parent: pulumi.Resource, args: "PredictorApiArgs") -> PredictorImage:
    """The API's image in ECR: the GPU base (and CUDA torch) when it asks for GPUs, else the CPU one."""
    gpu = args.spec.compute.gpu > 0
    return PredictorImage(
        f"{args.stack}-{args.spec.name}",
        args.folder,
        GPU_BASE_IMAGE if gpu else CPU_BASE_IMAGE,
        GPU_TORCH_INDEX if gpu else CPU_TORCH_INDEX,
        force_delete=args.force_delete_images,
        opts=pulumi.ResourceOptions(parent=parent),
    )


def labels_for(spec: ApiSpec) -> dict[str, str]:
    # No label named `api`: Prometheus copies pod labels onto samples and would clash with the metric's label.
    return {"app.kubernetes.io/name": spec.name, "app.kubernetes.io/instance": spec.name}


COMPONENT_LABEL = "app.kubernetes.io/component"


def all_labels(spec: ApiSpec, component: str = "predictor") -> dict[str, str]:
    return {**labels_for(spec), "app.kubernetes.io/part-of": "myelin", COMPONENT_LABEL: component}


def grace_period(spec: ApiSpec, pods: PodConfig) -> int:
    """preStop pause + the runtime's drain timeout + a margin for process exit."""
    return pods.pre_stop_seconds + math.ceil(spec.serving.drain_timeout.seconds) + 5


class Parts:
    """Builds one API's Kubernetes objects as children of its component, each after `args.after`.

    `role` (an AsyncAPI's `gateway` or `worker`) is the `app.kubernetes.io/component` label of the objects and
    part of every selector, so two Deployments of one API never select each other's pods; `object_suffix` goes
    after the API's name in the objects' names.
    """

    def __init__(self, component: pulumi.ComponentResource, name: str, args: PredictorApiArgs,
                 role: str | None = None, object_suffix: str = ""):
        self.component = component
        self.name = name
        self.args = args
        self.spec = args.spec
        self.object_suffix = object_suffix
        #: The labels of this Parts' objects, and those that select its pods.
        self.labels = all_labels(args.spec, role or "predictor")
        self.selector = {**labels_for(args.spec), **({COMPONENT_LABEL: role} if role else {})}

    # ------------------------------------------------------------------ options and metadata
    def opts(self, *depends_on: pulumi.Resource | None, **kwargs: Any) -> pulumi.ResourceOptions:
        deps = [*self.args.after, *(d for d in depends_on if d is not None)]
        return pulumi.ResourceOptions(parent=self.component, depends_on=deps, **kwargs)

    def meta(self, suffix: str = "", **extra: Any) -> k8s.meta.v1.ObjectMetaArgs:
        return k8s.meta.v1.ObjectMetaArgs(name=f"{self.spec.name}{self.object_suffix}{suffix}",
                                          namespace=self.args.namespace, labels=self.labels, **extra)

    # ------------------------------------------------------------------ identity and secrets
    def model_role(self) -> IrsaRole | None:
        """The API's own IAM role, reading exactly its model (`s3_scope(model_uri).policy_document()`); None
        without an s3:// model (such an API has no AWS identity at all).

        IRSA rather than EKS Pod Identity: the cluster already trusts its OIDC provider for the add-ons
        (components/irsa.py), while Pod Identity needs the eks-pod-identity-agent add-on on every node (a
        hostNetwork DaemonSet, an EKS Auth endpoint in private subnets without NAT) and API pods' egress to
        the agent's link-local address; with IRSA the pod's egress needs only STS and S3 over HTTPS.
        """
        model, args = self.args.model, self.args
        if model is None:
            return None
        if args.oidc_provider_arn is None or args.oidc_provider_url is None:
            raise ValueError(f"{self.spec.name}: an s3:// model_uri needs the cluster's OIDC provider (IRSA)")
        return irsa_role(
            f"{self.name}-model",
            oidc_provider_arn=args.oidc_provider_arn,
            oidc_provider_url=args.oidc_provider_url,
            namespace=args.namespace,
            service_account=self.spec.name,
            policy=model.policy_document(args.partition),
            # The policy pack finds an API's S3 grants by this name and checks them against its model_uri.
            policy_name=MODEL_POLICY_PREFIX + self.spec.name,
            tags={"myelin:stack": args.stack, "myelin:api": self.spec.name},
            parent=self.component,
        )

    def service_account(self, role: IrsaRole | None = None) -> k8s.core.v1.ServiceAccount:
        """The API's ServiceAccount (no Kubernetes API token). With a role: annotated for IRSA, and created after
        the role's policy, so no pod starts before it may read its model."""
        metadata = self.meta(annotations={ROLE_ARN_ANNOTATION: role.arn}) if role is not None else self.meta()
        return k8s.core.v1.ServiceAccount(f"{self.name}-sa", metadata=metadata, automount_service_account_token=False,
                                          opts=self.opts(*(role.resources if role is not None else [])))

    def api_keys_secret(self) -> k8s.core.v1.Secret | None:
        if self.spec.networking.auth is None:
            return None
        if self.args.api_keys is None:
            raise ValueError(f"{self.spec.name}: networking.auth is set but no API keys were provided")
        return k8s.core.v1.Secret(
            f"{self.name}-api-keys",
            metadata=self.meta("-api-keys"),
            type="Opaque",
            string_data={API_KEYS_FILE: pulumi.Output.secret(self.args.api_keys)},
            opts=self.opts(),
        )

    # ------------------------------------------------------------------ pods
    def pod_template(self, image: pulumi.Input[str], service_account: k8s.core.v1.ServiceAccount,
                     secret: k8s.core.v1.Secret | None,
                     extra_env: dict[str, str] | None = None,
                     container_args: list[str] | None = None) -> k8s.core.v1.PodTemplateSpecArgs:
        spec, args = self.spec, self.args
        gpu = spec.compute.gpu > 0
        env: list[k8s.core.v1.EnvVarArgs] = [
            k8s.core.v1.EnvVarArgs(name=SPEC_ENV, value=spec.model_dump_json()),
            k8s.core.v1.EnvVarArgs(name="PORT", value=str(PORT)),
            # Libraries that cache (Hugging Face, torch) write under HOME: keep it on the writable /tmp.
            k8s.core.v1.EnvVarArgs(name="HOME", value="/tmp"),
            k8s.core.v1.EnvVarArgs(name="PYTHONUNBUFFERED", value="1"),
            # Keep idle connections open longer than the ALB does, or it reuses one the server just
            # closed and answers 502 (the ALB's idle timeout is set on the Ingress below).
            k8s.core.v1.EnvVarArgs(name="MYELIN_KEEP_ALIVE_TIMEOUT", value=str(args.ingress.idle_timeout_seconds + 5)),
            *(k8s.core.v1.EnvVarArgs(name=k, value=v) for k, v in (extra_env or {}).items()),
        ]
        resources: dict[str, dict[str, str]] = {
            "requests": {"cpu": spec.compute.cpu, "memory": spec.compute.mem},
            "limits": {"memory": spec.compute.mem},
        }
        model = args.model
        if model is not None:
            env.extend([
                k8s.core.v1.EnvVarArgs(name=contract.MODEL_CACHE_ENV, value=MODEL_CACHE_DIR),
                k8s.core.v1.EnvVarArgs(name=contract.MODEL_CACHE_MAX_BYTES_ENV, value=str(model.cache_max_bytes)),
                # What S3 held at `pulumi up`: a new model at the same URI changes the template and rolls the pods.
                k8s.core.v1.EnvVarArgs(name=contract.MODEL_VERSION_ENV, value=model.version),
            ])
            # The scheduler places the pod on a node with room for its model volume.
            resources["requests"]["ephemeral-storage"] = model.volume_size
        if gpu:
            resources["requests"]["nvidia.com/gpu"] = str(spec.compute.gpu)
            resources["limits"]["nvidia.com/gpu"] = str(spec.compute.gpu)

        volumes = [k8s.core.v1.VolumeArgs(name="tmp", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(size_limit="4Gi"))]
        mounts = [k8s.core.v1.VolumeMountArgs(name="tmp", mount_path="/tmp")]
        if model is not None:
            # The model cache on the pod's own disk: survives container restarts, goes with the pod.
            volumes.append(k8s.core.v1.VolumeArgs(
                name=MODEL_VOLUME, empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(size_limit=model.volume_size)))
            mounts.append(k8s.core.v1.VolumeMountArgs(name=MODEL_VOLUME, mount_path=MODEL_CACHE_DIR))
        if gpu:
            # CUDA libraries and data loaders use shared memory; the default 64Mi /dev/shm is too small.
            volumes.append(k8s.core.v1.VolumeArgs(
                name="dshm", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(medium="Memory", size_limit="1Gi")))
            mounts.append(k8s.core.v1.VolumeMountArgs(name="dshm", mount_path="/dev/shm"))
        if secret is not None:
            # API keys as a read-only file, not an environment variable (which subprocesses would inherit).
            volumes.append(k8s.core.v1.VolumeArgs(
                name=API_KEYS_VOLUME,
                secret=k8s.core.v1.SecretVolumeSourceArgs(secret_name=f"{spec.name}-api-keys", default_mode=0o440)))
            mounts.append(k8s.core.v1.VolumeMountArgs(name=API_KEYS_VOLUME, mount_path=contract.API_KEYS_DIR,
                                                      read_only=True))
            env.append(k8s.core.v1.EnvVarArgs(
                name=spec.networking.auth.api_keys_env + contract.API_KEYS_FILE_SUFFIX,
                value=f"{contract.API_KEYS_DIR}/{API_KEYS_FILE}"))

        probe_period = 5
        container = k8s.core.v1.ContainerArgs(
            name="predictor",
            image=image,
            args=container_args,  # after the image's ENTRYPOINT (`myelin serve /app/api ...`)
            ports=[k8s.core.v1.ContainerPortArgs(name="http", container_port=PORT, protocol="TCP")],
            env=env,
            resources=k8s.core.v1.ResourceRequirementsArgs(**resources),
            startup_probe=k8s.core.v1.ProbeArgs(
                http_get=k8s.core.v1.HTTPGetActionArgs(path=contract.HEALTH_PATH, port="http"),
                period_seconds=probe_period,
                timeout_seconds=3,
                failure_threshold=math.ceil(args.pods.startup_timeout_seconds / probe_period),
            ),
            readiness_probe=k8s.core.v1.ProbeArgs(
                http_get=k8s.core.v1.HTTPGetActionArgs(path=contract.READY_PATH, port="http"),
                period_seconds=probe_period,
                timeout_seconds=3,
                failure_threshold=2,
            ),
            liveness_probe=k8s.core.v1.ProbeArgs(
                http_get=k8s.core.v1.HTTPGetActionArgs(path=contract.HEALTH_PATH, port="http"),
                period_seconds=10,
                timeout_seconds=5,
                failure_threshold=3,
            ),
            lifecycle=k8s.core.v1.LifecycleArgs(
                # Keep serving while the load balancer deregisters the pod, then SIGTERM starts the drain.
                pre_stop=k8s.core.v1.LifecycleHandlerArgs(sleep=k8s.core.v1.SleepActionArgs(seconds=args.pods.pre_stop_seconds))
            ) if args.pods.pre_stop_seconds else None,
            security_context=k8s.core.v1.SecurityContextArgs(
                allow_privilege_escalation=False,
                read_only_root_filesystem=True,
                run_as_non_root=True,
                run_as_user=RUN_AS_USER,
                run_as_group=RUN_AS_USER,
                capabilities=k8s.core.v1.CapabilitiesArgs(drop=["ALL"]),
                seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"),
            ),
            volume_mounts=mounts,
        )

        node_selector = None
        tolerations = None
        if gpu:
            tolerations = [k8s.core.v1.TolerationArgs(key=GPU_TAINT_KEY, operator="Exists", effect="NoSchedule")]
            node_selector = GPU_NODE_SELECTOR if args.node_pools else None
        elif args.node_pools:
            node_selector = CPU_NODE_SELECTOR

        labels = self.selector
        return k8s.core.v1.PodTemplateSpecArgs(
            metadata=k8s.meta.v1.ObjectMetaArgs(
                labels=self.labels,
                annotations={
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(PORT),
                    "prometheus.io/path": contract.METRICS_PATH,
                    # Scratch only: the autoscaler may move the pod and remove its node after a spike.
                    **scratch_volumes_annotation(volumes),
                },
            ),
            spec=k8s.core.v1.PodSpecArgs(
                service_account_name=service_account.metadata.name,
                automount_service_account_token=False,
                enable_service_links=False,
                termination_grace_period_seconds=grace_period(spec, args.pods),
                security_context=k8s.core.v1.PodSecurityContextArgs(
                    run_as_non_root=True,
                    run_as_user=RUN_AS_USER,
                    run_as_group=RUN_AS_USER,
                    fs_group=RUN_AS_USER,
                    seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"),
                ),
                node_selector=node_selector,
                tolerations=tolerations,
                topology_spread_constraints=[
                    k8s.core.v1.TopologySpreadConstraintArgs(
                        max_skew=1,
                        topology_key=key,
                        when_unsatisfiable="ScheduleAnyway",
                        label_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=labels),
                    )
                    for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
                ],
                containers=[container],
                volumes=volumes,
            ),
        )

    def deployment(self, resource_name: str, replicas: int | None, template: k8s.core.v1.PodTemplateSpecArgs,
                   opts: pulumi.ResourceOptions, max_surge: Any = None,
                   max_unavailable: Any = None) -> k8s.apps.v1.Deployment:
        """The Deployment of this Parts' pods: a rolling update (by default `update_strategy` from api.yaml) with the
        same progress deadline as `pulumi up` waits (`rollout_timeouts`). `replicas` None: an autoscaler owns it."""
        update = self.spec.update_strategy
        return k8s.apps.v1.Deployment(
            resource_name,
            metadata=self.meta(),
            spec=k8s.apps.v1.DeploymentSpecArgs(
                replicas=replicas,
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=self.selector),
                revision_history_limit=5,
                # The same budget as `pulumi up` waits: a node, the image, the model load.
                progress_deadline_seconds=self.args.pods.rollout_seconds(self.spec.compute.gpu > 0),
                strategy=k8s.apps.v1.DeploymentStrategyArgs(
                    type="RollingUpdate",
                    rolling_update=k8s.apps.v1.RollingUpdateDeploymentArgs(
                        max_surge=update.max_surge if max_surge is None else max_surge,
                        max_unavailable=update.max_unavailable if max_unavailable is None else max_unavailable,
                    ),
                ),
                template=template,
            ),
            opts=opts,
        )

    def rollout_timeouts(self) -> pulumi.CustomTimeouts:
        """How long `pulumi up` waits for the Deployment: a node, the image pull, the model load (stack config)."""
        seconds = self.args.pods.rollout_seconds(self.spec.compute.gpu > 0)
        return pulumi.CustomTimeouts(create=f"{seconds}s", update=f"{seconds}s")

    # ------------------------------------------------------------------ traffic
    def service(self, name: str | None = None, ignore_changes: list[str] | None = None) -> k8s.core.v1.Service:
        """The Service selecting this Parts' pods: the API's own (`<api>`), or another by `name` (a canary's ping
        and pong, whose selector Argo Rollouts extends: `ignore_changes`)."""
        suffix = name[len(self.spec.name + self.object_suffix):] if name else ""
        return k8s.core.v1.Service(
            f"{self.name}-service{suffix}",
            metadata=self.meta(suffix),
            spec=k8s.core.v1.ServiceSpecArgs(
                type="ClusterIP",
                selector=self.selector,
                ports=[k8s.core.v1.ServicePortArgs(name="http", port=80, target_port="http", protocol="TCP")],
            ),
            opts=self.opts(ignore_changes=ignore_changes) if ignore_changes else self.opts(),
        )

    def pdb(self) -> k8s.policy.v1.PodDisruptionBudget:
        return k8s.policy.v1.PodDisruptionBudget(
            f"{self.name}-pdb",
            metadata=self.meta(),
            spec=k8s.policy.v1.PodDisruptionBudgetSpecArgs(
                # One pod at a time: node drains progress, capacity never drops by more than one replica.
                max_unavailable=1,
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=self.selector),
                unhealthy_pod_eviction_policy="AlwaysAllow",
            ),
            opts=self.opts(),
        )

    def network_policy(self, *extra_ingress: k8s.networking.v1.NetworkPolicyPeerArgs, load_balancer: bool = True,
                       extra_egress: list[k8s.networking.v1.NetworkPolicyEgressRuleArgs] | None = None,
                       ) -> k8s.networking.v1.NetworkPolicy:
        """In: the API's load balancer (by the addresses of its subnets; unless `load_balancer` is False) and
        Prometheus, on the port. Out: DNS, what `networking.egress` declares and `extra_egress`. The namespace
        denies everything else (ApiNamespace)."""
        spec, args = self.spec, self.args
        np = k8s.networking.v1
        port = [np.NetworkPolicyPortArgs(port=PORT, protocol="TCP")]
        lb_cidrs = args.load_balancer_cidrs[spec.networking.visibility]
        egress = [
            np.NetworkPolicyEgressRuleArgs(
                to=[np.NetworkPolicyPeerArgs(
                    namespace_selector=k8s.meta.v1.LabelSelectorArgs(match_labels={"kubernetes.io/metadata.name": "kube-system"}),
                    pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels={"k8s-app": "kube-dns"}),
                )],
                ports=[np.NetworkPolicyPortArgs(port=53, protocol="UDP"), np.NetworkPolicyPortArgs(port=53, protocol="TCP")],
            ),
            *(
                np.NetworkPolicyEgressRuleArgs(
                    to=[np.NetworkPolicyPeerArgs(ip_block=np.IPBlockArgs(cidr=rule.cidr))],
                    ports=[np.NetworkPolicyPortArgs(port=p, protocol="TCP") for p in rule.ports],
                )
                for rule in spec.networking.egress
            ),
            *(extra_egress or []),
        ]
        if args.model is not None:
            # The model: STS (the web identity exchange) and S3, over HTTPS. S3 is reached through the VPC's
            # gateway endpoint (or NAT) at S3's public addresses, which only a managed prefix list names, and
            # NetworkPolicies take CIDRs only; STS at public addresses, or at an interface endpoint's private
            # ones in the VPC (network.nat: none). So: port 443 anywhere, for this API alone. What it may read
            # is bounded by its IAM role, not by the address it connects to.
            egress.append(np.NetworkPolicyEgressRuleArgs(
                to=[np.NetworkPolicyPeerArgs(ip_block=np.IPBlockArgs(cidr="0.0.0.0/0"))],
                ports=[np.NetworkPolicyPortArgs(port=443, protocol="TCP")],
            ))
        return np.NetworkPolicy(
            f"{self.name}-netpol",
            metadata=self.meta(),
            spec=np.NetworkPolicySpecArgs(
                pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=self.selector),
                policy_types=["Ingress", "Egress"],
                ingress=[
                    # The ALB (target type ip) reaches pods from its addresses in these subnets, which hold
                    # nothing but load balancers (and NAT gateways for the public ones).
                    *([np.NetworkPolicyIngressRuleArgs(
                        from_=[np.NetworkPolicyPeerArgs(ip_block=np.IPBlockArgs(cidr=c)) for c in lb_cidrs],
                        ports=port,
                    )] if load_balancer else []),
                    # Prometheus scrapes /metrics.
                    np.NetworkPolicyIngressRuleArgs(
                        from_=[np.NetworkPolicyPeerArgs(
                            namespace_selector=k8s.meta.v1.LabelSelectorArgs(
                                match_labels={"kubernetes.io/metadata.name": args.prometheus_namespace}),
                            pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=args.prometheus_pod_labels),
                        )],
                        ports=port,
                    ),
                    # Peers of this API's kind (the interceptor that forwards held requests to an API scaled to zero).
                    *(np.NetworkPolicyIngressRuleArgs(from_=[peer], ports=port) for peer in extra_ingress),
                ],
                egress=egress,
            ),
            opts=self.opts(),
        )

    def ingress(self, service: k8s.core.v1.Service | None, *depends_on: pulumi.Resource,
                via: "IngressBackend | None" = None, path_type: str = "Exact",
                action: dict[str, Any] | None = None) -> k8s.networking.v1.Ingress:
        """The API's path on the stack's shared ALB; to its Service, or `via` another backend (the interceptor
        that holds requests of an API scaled to zero, in its own namespace). `path_type` Prefix also routes
        `<endpoint>/<anything>` (an AsyncAPI's job status)."""
        spec, args = self.spec, self.args
        annotations = ingress_annotations(spec, args)
        ignore: list[str] = []
        if action is not None:
            # A canary (components/apis/canary.py): the path goes to the action named after the API, whose
            # annotation Pulumi writes once and Argo Rollouts owns from then on.
            backend = k8s.networking.v1.IngressServiceBackendArgs(
                name=spec.name, port=k8s.networking.v1.ServiceBackendPortArgs(name="use-annotation"))
            annotations.update(action["annotations"])
            ignore = action["ignore"]
            metadata = self.meta(annotations=annotations)
        elif via is None:
            backend = k8s.networking.v1.IngressServiceBackendArgs(
                name=service.metadata.name, port=k8s.networking.v1.ServiceBackendPortArgs(name="http"))
            metadata = self.meta(annotations=annotations)
        else:
            backend = k8s.networking.v1.IngressServiceBackendArgs(
                name=via.service, port=k8s.networking.v1.ServiceBackendPortArgs(number=via.port))
            annotations.update(via.annotations)
            metadata = k8s.meta.v1.ObjectMetaArgs(name=f"{spec.name}{via.suffix}", namespace=via.namespace,
                                                  labels=all_labels(spec), annotations=annotations)
        return k8s.networking.v1.Ingress(
            f"{self.name}-ingress",
            metadata=metadata,
            spec=k8s.networking.v1.IngressSpecArgs(
                ingress_class_name="alb",
                rules=[
                    k8s.networking.v1.IngressRuleArgs(
                        host=args.ingress.domain if spec.networking.visibility == "public" else None,
                        http=k8s.networking.v1.HTTPIngressRuleValueArgs(
                            paths=[
                                # Only the API's own paths: /healthz, /readyz and /metrics stay on the pod network.
                                k8s.networking.v1.HTTPIngressPathArgs(
                                    path=path, path_type=kind,
                                    backend=k8s.networking.v1.IngressBackendArgs(service=backend),
                                )
                                for path, kind in routed_paths(spec, path_type)
                            ]
                        ),
                    )
                ],
            ),
            opts=self.opts(*depends_on, ignore_changes=ignore) if ignore else self.opts(*depends_on),
        )

    def url(self, ingress: k8s.networking.v1.Ingress) -> pulumi.Output[str]:
        spec, args = self.spec, self.args
        scheme = "https" if args.ingress.certificate_arn is not None else "http"
        if args.ingress.domain and spec.networking.visibility == "public":
            return pulumi.Output.from_input(f"https://{args.ingress.domain}{spec.endpoint}")
        return ingress.status.apply(lambda s: f"{scheme}://{_hostname(s)}{spec.endpoint}")


def routed_paths(spec: ApiSpec, native_path_type: str = "Exact") -> list[tuple[str, str]]:
    """(path, pathType) the load balancer routes to an API, one per protocol it speaks (networking.protocols):
    its endpoint (myelin; Prefix for an AsyncAPI's job status), `<endpoint>/v1` (openai) and `/v2/models/<name>`
    (oip), both Prefix (each route under them, and the OIP routes' `/versions/<v>`)."""
    protocols = protocols_of(spec)
    paths = []
    if contract.PROTOCOL_MYELIN in protocols:
        paths.append((spec.endpoint, native_path_type))
    if contract.PROTOCOL_OPENAI in protocols:
        paths.append((spec.endpoint + contract.OPENAI_PREFIX, "Prefix"))
    if contract.PROTOCOL_OIP in protocols:
        paths.append((f"{contract.OIP_MODELS_PREFIX}/{spec.name}", "Prefix"))
    return paths


def ingress_annotations(spec: ApiSpec, args: PredictorApiArgs) -> dict[str, pulumi.Input[str]]:
    visibility = spec.networking.visibility
    ing = args.ingress
    annotations: dict[str, pulumi.Input[str]] = {
        # One ALB per stack and visibility, shared by every API's Ingress.
        ALB + "group.name": f"myelin-{args.stack}-{visibility}",
        ALB + "scheme": "internet-facing" if visibility == "public" else "internal",
        ALB + "target-type": "ip",
        # Pinned to the subnets the NetworkPolicies admit (identical for every Ingress of the group).
        ALB + "subnets": pulumi.Output.all(*args.load_balancer_subnets[visibility]).apply(",".join),
        ALB + "healthcheck-path": contract.READY_PATH,
        ALB + "healthcheck-port": "traffic-port",
        ALB + "healthcheck-interval-seconds": "10",
        ALB + "healthy-threshold-count": "2",
        ALB + "unhealthy-threshold-count": "2",
        ALB + "success-codes": "200",
        # Deregistration must outlast the pod's drain so no in-flight request is cut.
        ALB + "target-group-attributes": f"deregistration_delay.timeout_seconds={grace_period(spec, args.pods)}",
        ALB + "load-balancer-attributes": (
            f"idle_timeout.timeout_seconds={ing.idle_timeout_seconds},"
            "routing.http.drop_invalid_header_fields.enabled=true"
        ),
        ALB + "inbound-cidrs": ",".join(ing.public_source_cidrs if visibility == "public" else args.internal_source_cidrs),
        ALB + "tags": f"myelin:stack={args.stack}",  # LB-level: must be identical across the group
    }
    if ing.certificate_arn:
        annotations.update(
            {
                ALB + "listen-ports": json.dumps([{"HTTP": 80}, {"HTTPS": 443}]),
                ALB + "certificate-arn": ing.certificate_arn,
                ALB + "ssl-redirect": "443",
                ALB + "ssl-policy": ing.ssl_policy,
            }
        )
    else:
        annotations[ALB + "listen-ports"] = json.dumps([{"HTTP": 80}])
    return annotations


def _hostname(status: Any) -> str:
    try:
        lb = status["load_balancer"] if isinstance(status, dict) else status.load_balancer
        ingress = lb["ingress"] if isinstance(lb, dict) else lb.ingress
        first = ingress[0]
        return (first.get("hostname") if isinstance(first, dict) else first.hostname) or "pending"
    except (KeyError, IndexError, TypeError, AttributeError):
        return "pending"
