"""The cloud path, proven under mocks: creation and deletion order, rollout waits, GPU node groups, disks,
CI access, chart values (issue 8).

Ordering is checked on the graph the engine would see (harness.Node: depends_on, provider, parent), with
local components expanded to their children as the Pulumi SDK does (pulumi/runtime/rpc.py _add_dependency).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from components import versions
from components.config import PodConfig
from components.gpu import ACCELERATOR_LABEL, accelerator

from .harness import StackRun, run_program, user_config

RELEASE = "kubernetes:helm.sh/v3:Release"


def _release_node(run: StackRun, chart: str):
    (node,) = [n for n in run.nodes if n.typ == RELEASE and n.name.endswith(f"-{chart}")]
    return node


def _k8s_nodes(run: StackRun):
    return [n for n in run.nodes if n.custom and n.typ.startswith("kubernetes:") and not n.typ.startswith("pulumi:")]


# -- item 2: every Kubernetes object after (and, on destroy, before) the node groups -------------------------------


def test_every_kubernetes_object_comes_after_every_node_group(run):
    node_groups = {n for n in run.nodes if n.typ == "aws:eks/nodeGroup:NodeGroup"}
    assert len(node_groups) >= 4
    objects = _k8s_nodes(run)
    assert len(objects) > 30
    for obj in objects:
        missing = node_groups - run.all_deps(obj)
        assert not missing, f"{obj.typ} {obj.name} is not ordered after {sorted(n.name for n in missing)}"
    (provider,) = [n for n in run.nodes if n.typ == "pulumi:providers:kubernetes"]
    assert node_groups <= run.direct_deps(provider)


def test_node_groups_come_after_the_cni_and_its_role(run):
    cni = next(n for n in run.nodes if n.typ == "aws:eks/addon:Addon" and n.name.endswith("-vpc-cni"))
    role_pieces = {d for d in run.direct_deps(cni) if d.typ.startswith("aws:iam/")}
    assert {d.typ for d in role_pieces} == {"aws:iam/role:Role", "aws:iam/rolePolicyAttachment:RolePolicyAttachment"}
    for group in (n for n in run.nodes if n.typ == "aws:eks/nodeGroup:NodeGroup"):
        assert cni in run.all_deps(group) and role_pieces <= run.all_deps(group)


# -- item 1: no release races the load balancer controller's webhooks ---------------------------------------------


def test_the_load_balancer_controller_installs_no_service_webhook(run):
    values = next(r.inputs["values"] for r in run.of_type(RELEASE) if r.inputs["chart"] == "aws-load-balancer-controller")
    assert values["enableServiceMutatorWebhook"] is False
    # Nothing Myelin creates needs it: no Service of type LoadBalancer.
    assert all(s.inputs["spec"].get("type", "ClusterIP") != "LoadBalancer" for s in run.k8s("Service"))


def test_objects_its_webhooks_see_come_after_the_controller_and_its_permissions(run):
    lbc = _release_node(run, "aws-load-balancer-controller")
    permissions = {d for d in run.direct_deps(lbc) if d.typ.startswith("aws:iam/")}
    assert {d.typ for d in permissions} == {"aws:iam/role:Role", "aws:iam/rolePolicy:RolePolicy"}
    keda = _release_node(run, "keda")
    api_namespace = next(n for n in run.nodes if n.typ.endswith(":Namespace") and n.name.endswith("-apis"))
    for obj in _k8s_nodes(run):
        if obj.parent is None or obj.parent.typ != "myelin:apis:PredictorApi":
            continue
        deps = run.all_deps(obj)
        # Ingresses (validating webhook, ALB) and pods (readiness-gate webhook) only once the controller runs,
        # with its IAM permissions: on destroy it deletes their ALBs before it goes itself.
        assert {lbc, keda, api_namespace} | permissions <= deps, obj.name


def test_depending_on_a_component_means_depending_on_its_children(run):
    """PredictorApi objects name the `Addons` component in depends_on; the SDK expands it to every custom resource
    below it, and the harness does the same: the ordering above rests on that expansion, so check it is complete."""
    addons = next(n for n in run.nodes if n.typ == "myelin:infra:Addons")
    descendants = {n for n in addons.descendants() if n.custom and not (n.parent and n.parent.custom)}
    assert len(descendants) > 10
    ingress = next(n for n in run.nodes if n.typ.endswith(":Ingress"))
    assert descendants <= run.direct_deps(ingress)


# -- item 5: the Deployment wait covers a node, the image and the model load --------------------------------------


def test_rollout_waits_are_derived_from_config(run):
    pods = PodConfig(**run.config.get("myelin:pods", {}))
    names = {r.name for r in run.api_deployments()}
    for dep in (n for n in run.nodes if n.typ == "kubernetes:apps/v1:Deployment" and n.name in names):
        inputs = next(r.inputs for r in run.k8s("Deployment") if r.name == dep.name)
        spec = json.loads(inputs["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"])
        gpu = spec["compute"]["gpu"] > 0
        expected = pods.rollout_seconds(gpu)
        assert dep.custom_timeouts.create == dep.custom_timeouts.update == f"{expected}s", dep.name
        assert inputs["spec"]["progressDeadlineSeconds"] == expected
        if gpu:
            assert expected >= 20 * 60
            assert expected == max(1200, pods.gpu_node_wait_seconds + pods.gpu_image_pull_seconds
                                   + pods.startup_timeout_seconds)
        else:
            assert expected == pods.cpu_node_wait_seconds + pods.cpu_image_pull_seconds + pods.startup_timeout_seconds


def test_prod_gpu_api_waits_longer_than_helm_and_the_default(prod):
    dep = next(n for n in prod.nodes if n.name == "sentence-embedding-deployment")
    assert int(dep.custom_timeouts.create.rstrip("s")) >= 40 * 60  # 900 s model load in prod plus node and pull


# -- item 6: readiness gate ------------------------------------------------------------------------------------


def test_api_pods_get_the_alb_readiness_gate(run):
    (ns,) = [n.inputs for n in run.k8s("Namespace") if n.inputs["metadata"]["name"] == "apis"]
    assert ns["metadata"]["labels"]["elbv2.k8s.aws/pod-readiness-gate-inject"] == "enabled"
    for dep in run.k8s("Deployment"):
        assert dep.inputs["metadata"]["namespace"] == "apis"
        assert dep.inputs["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


# -- item 7: GPU groups labelled for the autoscaler, one GPU model each ----------------------------------------------


def test_gpu_groups_are_split_per_gpu_model_and_labelled(run):
    groups = [g.inputs for g in run.of_type("aws:eks/nodeGroup:NodeGroup") if g.inputs["labels"]["myelin.dev/pool"] == "gpu"]
    configured = run.config["myelin:cluster"]["gpu_nodes"]["instance_types"]
    assert sorted(t for g in groups for t in g["instanceTypes"]) == sorted(
        configured * (2 if run.config["myelin:cluster"]["gpu_nodes"].get("spot", True) else 1))
    for g in groups:
        models = {accelerator(t) for t in g["instanceTypes"]}
        assert len(models) == 1 and g["labels"][ACCELERATOR_LABEL] == models.pop()
    assert len({g["labels"][ACCELERATOR_LABEL] for g in groups}) == 2  # both stacks list two GPU models


def test_groups_that_scale_from_zero_carry_their_labels_and_taint_as_asg_tags(run):
    """cluster-autoscaler sees a group with no node only through its ASG's node-template tags."""
    groups = {g.name: g for g in run.of_type("aws:eks/nodeGroup:NodeGroup")}
    tags = [t.inputs for t in run.of_type("aws:autoscaling/tag:Tag")]
    by_asg: dict[str, dict[str, str]] = {}
    for t in tags:
        assert t["tag"]["propagateAtLaunch"] is False
        by_asg.setdefault(t["autoscalingGroupName"], {})[t["tag"]["key"]] = t["tag"]["value"]
    for name, group in groups.items():
        asg = group.outputs["resources"][0]["autoscalingGroups"][0]["name"]
        template = by_asg.get(asg, {})
        if group.inputs["labels"]["myelin.dev/pool"] == "system":
            assert not template  # a fixed size: never scaled from zero
            continue
        for key, value in group.inputs["labels"].items():
            assert template[f"k8s.io/cluster-autoscaler/node-template/label/{key}"] == value, (name, key)
        gpu = group.inputs["labels"]["myelin.dev/pool"] == "gpu"
        assert (template.get("k8s.io/cluster-autoscaler/node-template/taint/nvidia.com/gpu") == "true:NoSchedule") == gpu


def test_an_unknown_gpu_instance_type_is_a_config_error():
    from components.config import StackConfigError, load_settings

    raw = {k.split(":", 1)[1]: copy.deepcopy(v) for k, v in user_config("dev").items() if k.startswith("myelin:")}
    raw["cluster"]["gpu_nodes"]["instance_types"] = ["g4dn.xlarge", "m6i.large"]
    with pytest.raises(StackConfigError, match=r"myelin:cluster.gpu_nodes.instance_types.*'m6i.large' is not an NVIDIA GPU"):
        load_settings(raw, "dev", "us-west-2")


# -- item 8: the disk goes to the volume that holds images, per AMI family ---------------------------------------------


def _variant(stack: str, mutate) -> StackRun:
    config = copy.deepcopy(user_config(stack))
    mutate(config)
    return run_program(stack, config)


@pytest.fixture(scope="module")
def bottlerocket() -> StackRun:
    def mutate(c: dict[str, Any]) -> None:
        gpu = c["myelin:cluster"]["gpu_nodes"]
        gpu.update(ami_type="BOTTLEROCKET_x86_64_NVIDIA", instance_types=["g5.xlarge", "g6.xlarge", "g5.2xlarge"],
                   disk_size_gib=180)

    return _variant("dev", mutate)


def test_bottlerocket_gpu_nodes_size_the_data_volume(bottlerocket):
    templates = {t.name: t.inputs for t in bottlerocket.of_type("aws:ec2/launchTemplate:LaunchTemplate")}
    gpu = {m["deviceName"]: m["ebs"] for m in templates["myelin-dev-gpu"]["blockDeviceMappings"]}
    assert set(gpu) == {"/dev/xvda", "/dev/xvdb"}
    assert gpu["/dev/xvdb"]["volumeSize"] == 180 and gpu["/dev/xvda"]["volumeSize"] < 180
    assert all(v["encrypted"] == "true" for v in gpu.values())
    cpu = {m["deviceName"]: m["ebs"] for m in templates["myelin-dev-cpu"]["blockDeviceMappings"]}
    assert set(cpu) == {"/dev/xvda"}  # AL2023: one volume, images included
    groups = {g.name: g.inputs for g in bottlerocket.of_type("aws:eks/nodeGroup:NodeGroup")}
    assert {"myelin-dev-gpu-a10g-spot", "myelin-dev-gpu-l4-spot", "myelin-dev-gpu-a10g-ondemand"} <= set(groups)
    assert groups["myelin-dev-gpu-a10g-spot"]["instanceTypes"] == ["g5.xlarge", "g5.2xlarge"]
    assert groups["myelin-dev-gpu-l4-spot"]["labels"][ACCELERATOR_LABEL] == "nvidia-l4"
    charts = {r.inputs["chart"] for r in bottlerocket.of_type(RELEASE)}
    assert "nvidia-device-plugin" not in charts  # Bottlerocket NVIDIA AMIs ship it


# -- item 3: CI roles reach and authenticate to the cluster ---------------------------------------------------------------


@pytest.fixture(scope="module")
def with_ci() -> StackRun:
    def mutate(c: dict[str, Any]) -> None:
        c["myelin:cluster"]["ci_access"] = {
            "deploy_role_arn": "arn:aws:iam::123456789012:role/myelin-deploy",
            "preview_role_arn": "arn:aws:iam::123456789012:role/myelin-preview",
        }

    return _variant("prod", mutate)


def test_ci_roles_get_access_entries(with_ci):
    (cluster,) = with_ci.of_type("eks:index:Cluster")
    entries = cluster.inputs["accessEntries"]
    deploy, preview = entries["ci-deploy"], entries["ci-preview"]
    assert deploy["principalArn"].endswith("role/myelin-deploy")
    assert [p["policyArn"] for p in deploy["accessPolicies"].values()] == [
        "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"]
    assert preview["principalArn"].endswith("role/myelin-preview")
    # Read-only, Secrets included: `pulumi preview` of a Helm release reads its release Secret.
    assert [p["policyArn"] for p in preview["accessPolicies"].values()] == [
        "arn:aws:eks::aws:cluster-access-policy/AmazonEKSAdminViewPolicy"]
    assert entries["admin-0"]["principalArn"].endswith("role/myelin-platform-admin")


# -- item 10: KEDA supports the stacks' Kubernetes; windows hold two scrapes -------------------------------------------


def test_every_pinned_controller_supports_the_stack_kubernetes(run):
    version = run.config["myelin:cluster"].get("version", versions.KUBERNETES_VERSION)
    minor = tuple(int(p) for p in version.split("."))
    for chart in versions.ALL_CHARTS:
        if chart.kubernetes is None:
            continue
        low, high = (tuple(int(p) for p in v.split(".")) for v in chart.kubernetes)
        assert low <= minor <= high, f"{chart.chart} {chart.version} supports {chart.kubernetes}, stack runs {version}"


def test_keda_is_2_20_for_kubernetes_1_34():
    assert versions.KEDA.version.startswith("2.20.") and versions.KEDA.kubernetes == ("1.33", "1.35")


# -- chart values: every key the program sets is listed (and was checked) ---------------------------------------------


OPAQUE_SUFFIXES = ("nodeSelector", "tolerations", "annotations", "extraArgs", "expanderPriorities")


def _paths(values: Any, listed: tuple[str, ...], prefix: str = "") -> set[str]:
    out = set()
    for key, value in values.items():
        path = f"{prefix}{key}"
        if path in listed or not isinstance(value, dict):
            out.add(path)
        else:
            out |= _paths(value, listed, path + ".")
    return out


def test_every_chart_value_the_program_sets_is_listed_in_versions(run, bottlerocket, with_ci):
    charts = {c.chart: c for c in versions.ALL_CHARTS}
    seen: set[str] = set()
    for stack_run in (run, bottlerocket, with_ci):
        for release in stack_run.of_type(RELEASE):
            chart = charts[release.inputs["chart"]]
            assert release.inputs["version"] == chart.version
            unlisted = _paths(release.inputs["values"], chart.values) - set(chart.values)
            assert not unlisted, f"{chart.chart} {chart.version}: set but not listed in versions.py: {sorted(unlisted)}"
            seen.add(chart.chart)
    assert seen == set(charts)
