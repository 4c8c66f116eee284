"""Assertions on the resource graph `__main__.py` registers for each stack file (dev, prod)."""

from __future__ import annotations

import ipaddress
import json
import math
from pathlib import Path

import pytest

from components import versions
from components.config import REPO_ROOT
from myelin.spec import ApiSpec, load_api_spec

from components.gpu import accelerator

from .harness import is_secret, unwrap_secrets
from .pulumi_mocks import _fake_id

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def deployments(run):
    return {r.inputs["metadata"]["name"]: r.inputs for r in run.api_deployments()}


def spec_of(deployment) -> ApiSpec:
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    return ApiSpec.model_validate_json(env["MYELIN_API_SPEC"]["value"])


def selected(run) -> dict[str, dict]:
    """The stack's RealtimeAPIs and their overrides (AsyncAPIs: tests/infra/test_asyncapi.py)."""
    return {name: (sel or {}).get("overrides", {}) for name, sel in run.config["myelin:apis"].items()
            if name not in run.async_apis()}


# -- stacks --------------------------------------------------------------------------------------


def test_stacks_deploy_the_real_api_folders():
    for name in ("iris-classifier", "kmeans", "sentence-embedding", "image-classifier"):
        assert (REPO_ROOT / "apis" / name / "api.yaml").is_file()


def test_stacks_differ_where_teams_differ(dev, prod):
    dn, pn = dev.config["myelin:network"], prod.config["myelin:network"]
    assert (dn["nat"], pn["nat"]) == ("single", "per_az")
    assert len(dev.of_type("aws:ec2/natGateway:NatGateway")) == 1
    assert len(prod.of_type("aws:ec2/natGateway:NatGateway")) == pn["az_count"] == 3
    dev_groups = {g.name: g.inputs for g in dev.of_type("aws:eks/nodeGroup:NodeGroup")}
    prod_groups = {g.name: g.inputs for g in prod.of_type("aws:eks/nodeGroup:NodeGroup")}
    assert dev_groups["myelin-dev-cpu-ondemand"]["scalingConfig"]["minSize"] == 0  # spot-only base
    assert prod_groups["myelin-prod-cpu-ondemand"]["scalingConfig"]["minSize"] == 3  # on-demand base
    assert not [g for g in prod_groups if "-gpu-" in g and g.endswith("-spot")]  # prod GPUs on demand only
    assert "myelin-dev-gpu-t4-spot" in dev_groups and "myelin-prod-gpu-l4-ondemand" in prod_groups
    assert set(selected(dev)) != set(selected(prod))
    assert "sentence-embedding" in selected(prod) and "sentence-embedding" not in selected(dev)
    assert spec_of(deployments(prod)["iris-classifier"]).autoscaling.min_replicas == 2
    assert spec_of(deployments(dev)["iris-classifier"]).autoscaling.min_replicas == 1
    visibilities = {i.inputs["metadata"]["annotations"]["alb.ingress.kubernetes.io/scheme"] for i in prod.k8s("Ingress")}
    assert visibilities == {"internet-facing", "internal"}


# -- network -------------------------------------------------------------------------------------


def test_network_spans_azs_with_tagged_public_and_private_subnets(run):
    subnets = [s.inputs for s in run.of_type("aws:ec2/subnet:Subnet")]
    public = [s for s in subnets if s["tags"].get("kubernetes.io/role/elb") == "1"]
    private = [s for s in subnets if s["tags"].get("kubernetes.io/role/internal-elb") == "1"]
    az_count = run.config["myelin:network"]["az_count"]
    assert len(public) == len(private) == az_count >= 2
    assert len({s["availabilityZone"] for s in private}) == az_count
    assert all(s["mapPublicIpOnLaunch"] is False for s in subnets)
    cluster_tag = f"kubernetes.io/cluster/myelin-{run.stack}"
    assert all(cluster_tag in s["tags"] for s in subnets)


# -- cluster -------------------------------------------------------------------------------------


def test_eks_cluster_settings(run):
    (cluster,) = run.of_type("eks:index:Cluster")
    c = cluster.inputs
    cfg = run.config["myelin:cluster"]
    assert c["skipDefaultNodeGroup"] is True
    assert c["createOidcProvider"] is True
    assert c["authenticationMode"] == "API"
    assert c["encryptionConfigKeyArn"].startswith("arn:aws:kms:")
    assert c["enabledClusterLogTypes"] == cfg["log_types"]
    assert c["publicAccessCidrs"] == cfg["endpoint_public_access_cidrs"]
    assert c["endpointPrivateAccess"] is True
    assert c["nodeAssociatePublicIpAddress"] is False
    assert c["version"] == cfg["version"]
    # The VPC CNI is an EKS add-on with its own IRSA role (not the node role), enforcing NetworkPolicies.
    assert c["useDefaultVpcCni"] is True and "vpcCniOptions" not in c
    (cni,) = [a.inputs for a in run.of_type("aws:eks/addon:Addon") if a.inputs["addonName"] == "vpc-cni"]
    assert json.loads(cni["configurationValues"]) == {"enableNetworkPolicy": "true"}
    role = next(r for r in run.of_type("aws:iam/role:Role") if r.outputs["arn"] == cni["serviceAccountRoleArn"])
    trust = json.loads(role.inputs["assumeRolePolicy"])["Statement"][0]["Condition"]["StringEquals"]
    assert "system:serviceaccount:kube-system:aws-node" in trust.values()
    attached = {a.inputs["policyArn"] for a in run.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
                if a.inputs["role"] == role.outputs["name"]}
    assert attached == {"arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy"}
    node_policies = {a.inputs["policyArn"] for a in run.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
                     if a.name.startswith(f"myelin-{run.stack}-nodes-")}
    assert "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy" not in node_policies
    key = run.of_type("aws:kms/key:Key")[0].inputs
    assert key["enableKeyRotation"] is True
    assert run.outputs["cluster_name"] == f"myelin-{run.stack}"
    assert "kubeconfig" in run.secret_outputs and json.loads(run.outputs["kubeconfig"])["kind"] == "Config"


def test_node_groups(run):
    groups = {g.name: g.inputs for g in run.of_type("aws:eks/nodeGroup:NodeGroup")}
    system = groups[f"myelin-{run.stack}-system"]
    assert system["capacityType"] == "ON_DEMAND" and "taints" not in system
    gpu = {n: g for n, g in groups.items() if "-gpu-" in n}
    assert gpu
    ami = run.config["myelin:cluster"]["gpu_nodes"]["ami_type"]
    for g in gpu.values():
        assert g["amiType"] == ami and "NVIDIA" in g["amiType"]
        assert {"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"} in g["taints"]
        assert g["labels"]["myelin.dev/pool"] == "gpu" and g["labels"]["nvidia.com/gpu.present"] == "true"
        assert g["scalingConfig"]["minSize"] == 0  # GPU capacity scales to zero
        # cluster-autoscaler knows a new node's GPUs are coming: one GPU model per group, labelled.
        models = {accelerator(t) for t in g["instanceTypes"]}
        assert models == {g["labels"]["k8s.amazonaws.com/accelerator"]}
    capacity = {(g["labels"]["myelin.dev/pool"], g["capacityType"]) for g in groups.values()}
    assert ("cpu", "ON_DEMAND") in capacity
    if run.config["myelin:cluster"]["cpu_nodes"]["spot"]:
        assert ("cpu", "SPOT") in capacity
    # nodes live only in private subnets (ids as the mocks derive them from the subnet resources)
    private = {"subnet-" + _fake_id(sn.typ, sn.name) for sn in run.of_type("aws:ec2/subnet:Subnet")
               if sn.name.startswith(f"myelin-{run.stack}-private-")}
    public = {"subnet-" + _fake_id(sn.typ, sn.name) for sn in run.of_type("aws:ec2/subnet:Subnet")
              if "kubernetes.io/role/elb" in sn.inputs.get("tags", {})}
    assert private and public and not private & public
    for name, g in groups.items():
        assert g["subnetIds"] and set(g["subnetIds"]) <= private, name
        assert "remoteAccess" not in g  # no SSH
        assert g["launchTemplate"]["id"].startswith("lt-")
        assert run.ignore_changes[name] == ["scalingConfig.desiredSize"]
        assert g["tags"][f"k8s.io/cluster-autoscaler/myelin-{run.stack}"] == "owned"


def test_launch_templates_require_imdsv2_and_encrypt_volumes(run):
    templates = run.of_type("aws:ec2/launchTemplate:LaunchTemplate")
    assert len(templates) == 3
    for t in templates:
        md = t.inputs["metadataOptions"]
        assert md["httpTokens"] == "required" and md["httpPutResponseHopLimit"] == 1
        assert "keyName" not in t.inputs
        for bd in t.inputs["blockDeviceMappings"]:
            assert bd["ebs"]["encrypted"] == "true"


# -- add-ons -------------------------------------------------------------------------------------


def test_addons_are_pinned_upstream_charts(run):
    releases = {r.inputs["chart"]: r.inputs for r in run.of_type("kubernetes:helm.sh/v3:Release")}
    for chart in versions.ALL_CHARTS:
        assert chart.chart in releases, chart.chart
        assert releases[chart.chart]["version"] == chart.version
        assert releases[chart.chart]["repositoryOpts"]["repo"] == chart.repo
    plugin = releases["nvidia-device-plugin"]["values"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in plugin["tolerations"]
    ca = releases["cluster-autoscaler"]["values"]
    assert ca["autoDiscovery"]["clusterName"] == f"myelin-{run.stack}"
    assert ca["extraArgs"]["expander"] == "priority"
    assert ca["expanderPriorities"]["50"] == [".*-spot-.*"]
    lbc = releases["aws-load-balancer-controller"]["values"]
    assert lbc["region"] == run.config["aws:region"] and lbc["vpcId"].startswith("vpc-")
    fb = releases["aws-for-fluent-bit"]["values"]
    assert fb["cloudWatchLogs"]["enabled"] is True and fb["cloudWatchLogs"]["logGroupName"].startswith("/myelin/")
    # The chart's default per-namespace logGroupTemplate would override logGroupName.
    assert fb["cloudWatchLogs"]["logGroupTemplate"] == ""
    prom = releases["prometheus"]["values"]
    assert prom["server"]["fullnameOverride"] == "prometheus-server"


def test_each_aws_controller_has_its_own_scoped_irsa_role(run):
    releases = {r.inputs["chart"]: r.inputs["values"] for r in run.of_type("kubernetes:helm.sh/v3:Release")}
    role_of = {
        "cluster-autoscaler": releases["cluster-autoscaler"]["rbac"]["serviceAccount"],
        "aws-load-balancer-controller": releases["aws-load-balancer-controller"]["serviceAccount"],
        "aws-for-fluent-bit": releases["aws-for-fluent-bit"]["serviceAccount"],
    }
    arns = {sa["annotations"]["eks.amazonaws.com/role-arn"] for sa in role_of.values()}
    assert len(arns) == 3  # one role each
    # An AsyncAPI's gateway and worker roles: tests/infra/test_asyncapi.py.
    roles = [r.inputs for r in run.of_type("aws:iam/role:Role") if r.name.endswith("-irsa")
             and ":serviceaccount:apis:" not in r.inputs["assumeRolePolicy"]]
    assert len(roles) == 5  # and the VPC CNI's, and KEDA's (its SQS scaler: the stacks have an AsyncAPI)
    subjects = set()
    for role in roles:
        trust = json.loads(role["assumeRolePolicy"])["Statement"][0]
        assert trust["Action"] == "sts:AssumeRoleWithWebIdentity"
        cond = trust["Condition"]["StringEquals"]
        subjects |= {v for k, v in cond.items() if k.endswith(":sub")}
        assert any(k.endswith(":aud") for k in cond)
    assert subjects == {
        "system:serviceaccount:kube-system:cluster-autoscaler",
        "system:serviceaccount:kube-system:aws-load-balancer-controller",
        "system:serviceaccount:logging:aws-for-fluent-bit",
        "system:serviceaccount:kube-system:aws-node",
        "system:serviceaccount:keda:keda-operator",
    }
    for pol in run.of_type("aws:iam/rolePolicy:RolePolicy"):
        doc = json.loads(pol.inputs["policy"])
        for st in doc["Statement"]:
            actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            assert "*" not in actions and not any(a.endswith(":*") for a in actions)
    ca = next(json.loads(p.inputs["policy"]) for p in run.of_type("aws:iam/rolePolicy:RolePolicy")
              if "cluster-autoscaler" in p.name)
    scale = next(s for s in ca["Statement"] if "autoscaling:SetDesiredCapacity" in s["Action"])
    assert scale["Condition"]["StringEquals"] == {
        f"aws:ResourceTag/k8s.io/cluster-autoscaler/myelin-{run.stack}": "owned"}
    lbc = next(json.loads(p.inputs["policy"]) for p in run.of_type("aws:iam/rolePolicy:RolePolicy")
               if "aws-load-balancer-controller" in p.name)
    granted = {a for st in lbc["Statement"] for a in (st["Action"] if isinstance(st["Action"], list) else [st["Action"]])}
    # IngressGroups reorder rules on a shared listener; listener attributes are reconciled on every listener.
    assert {"elasticloadbalancing:SetRulePriorities", "elasticloadbalancing:ModifyListenerAttributes"} <= granted
    for st in lbc["Statement"]:
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        if {"ec2:CreateTags", "elasticloadbalancing:AddTags", "elasticloadbalancing:CreateLoadBalancer"} & set(actions):
            # Tagging and creating are never unconditional on every resource.
            assert "Condition" in st or st["Resource"] != "*", st


# -- predictor APIs ------------------------------------------------------------------------------


def test_every_selected_api_is_deployed_with_its_effective_spec(run):
    deps = deployments(run)
    assert set(deps) == set(selected(run))
    for name, overrides in selected(run).items():
        expected = load_api_spec(REPO_ROOT / "apis" / name, overrides, "test")
        assert spec_of(deps[name]) == expected
    assert set(run.outputs["endpoints"]) == set(selected(run)) | set(run.async_apis())


def test_ecr_repositories_scan_on_push_with_immutable_tags(run):
    repos = run.of_type("aws:ecr/repository:Repository")
    to_zero = any(spec_of(d).autoscaling.min_replicas == 0 for d in deployments(run).values())
    # One per API, and the cold-start responder's (the runtime alone) when an API scales to zero.
    assert sorted(r.name for r in repos) == sorted(
        [f"{run.stack}-{n}" for n in [*selected(run), *run.async_apis()]]
        + ([f"{run.stack}-myelin-cold-start"] if to_zero else []))
    for r in repos:
        assert r.inputs["imageTagMutability"] == "IMMUTABLE"
        assert r.inputs["imageScanningConfiguration"]["scanOnPush"] is True


def test_images_built_from_the_dockerfile_with_content_tags(run):
    images = {i.name: i.inputs for i in run.of_type("docker-build:index:Image")}
    deps = deployments(run)
    for name in selected(run):
        image = images[f"{run.stack}-{name}"]
        assert image["push"] is True
        staged = f".myelin/build/{run.stack}-{name}"
        assert image["dockerfile"]["location"] == f"{staged}/runtime/Dockerfile"
        assert image["context"]["location"] == f"{staged}/runtime"
        assert image["context"]["named"]["api"]["location"] == f"{staged}/api"
        gpu = spec_of(deps[name]).compute.gpu > 0
        assert image["buildArgs"]["BASE_IMAGE"] == (versions.GPU_BASE_IMAGE if gpu else versions.CPU_BASE_IMAGE)
        # torch from PyTorch's CPU index in the CPU image, CUDA 12.6 wheels (the base image's CUDA) in the GPU one.
        assert image["buildArgs"]["TORCH_INDEX_URL"] == (versions.GPU_TORCH_INDEX if gpu else versions.CPU_TORCH_INDEX)
        (tag,) = image["tags"]
        container_image = deps[name]["spec"]["template"]["spec"]["containers"][0]["image"]
        assert container_image.startswith(tag + "@sha256:")
        assert len(tag.rsplit(":", 1)[1]) == 20


def test_build_context_and_tag_are_the_files_git_tracks(tmp_path):
    """A model trained on a laptop (untracked, mode 0600), caches and virtualenvs never enter the image: the same
    commit gives the same staged context and the same tag wherever it is built."""
    import os
    import shutil
    import subprocess

    from components.image import content_tag, context_files, stage

    repo = tmp_path / "repo"
    api = repo / "apis" / "kmeans"
    shutil.copytree(REPO_ROOT / "apis" / "kmeans", api, ignore=shutil.ignore_patterns("__pycache__", "model", "*.joblib"))
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "."], check=True)
    clean_tag = content_tag(api, {"BASE_IMAGE": "x"})
    clean_files = context_files(api)
    assert "predictor.py" in clean_files and "api.yaml" in clean_files
    (api / "model").mkdir()
    (api / "model" / "kmeans.joblib").write_bytes(os.urandom(1024))
    os.chmod(api / "model" / "kmeans.joblib", 0o600)
    (api / "notes.txt").write_text("not committed")
    (api / ".venv").mkdir()
    (api / ".venv" / "x.py").write_text("x")
    assert context_files(api) == clean_files
    assert content_tag(api, {"BASE_IMAGE": "x"}) == clean_tag
    staged = stage(api, tmp_path / "staged", ensure=("requirements.txt",))
    assert sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()) == sorted(clean_files)
    assert all(oct(p.stat().st_mode & 0o777) in ("0o644", "0o755") for p in staged.rglob("*") if p.is_file())
    # A tracked file that changes does change the tag.
    (api / "predictor.py").write_text((api / "predictor.py").read_text() + "\n# edited\n")
    assert content_tag(api, {"BASE_IMAGE": "x"}) != clean_tag


def test_an_api_without_requirements_txt_builds(tmp_path):
    from components.image import stage

    api = tmp_path / "api"
    api.mkdir()
    (api / "api.yaml").write_text("name: bare\n")
    (api / "predictor.py").write_text("class Predictor:\n    def __init__(self, c): pass\n    def predict(self, p): return p\n")
    staged = stage(api, tmp_path / "staged", ensure=("requirements.txt",))
    assert (staged / "requirements.txt").read_text() == ""  # the Dockerfile installs it: nothing to install


def test_content_tag_changes_with_any_input(tmp_path):
    import shutil

    from components.image import content_tag

    api = tmp_path / "api"
    shutil.copytree(REPO_ROOT / "apis" / "iris-classifier", api,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    base = content_tag(api, {"BASE_IMAGE": "a"})
    assert content_tag(api, {"BASE_IMAGE": "a"}) == base
    assert content_tag(api, {"BASE_IMAGE": "b"}) != base
    (api / "predictor.py").write_text((api / "predictor.py").read_text() + "\n# changed\n")
    assert content_tag(api, {"BASE_IMAGE": "a"}) != base
    (api / "__pycache__").mkdir(exist_ok=True)
    changed = content_tag(api, {"BASE_IMAGE": "a"})
    (api / "__pycache__" / "x.pyc").write_bytes(b"ignored")
    assert content_tag(api, {"BASE_IMAGE": "a"}) == changed


def test_deployments(run):
    pods = run.config.get("myelin:pods", {})
    for name, dep in deployments(run).items():
        spec = spec_of(dep)
        d = dep["spec"]
        autoscaled = spec.autoscaling.min_replicas != spec.autoscaling.max_replicas
        assert autoscaled and "replicas" not in d
        if spec.rollout.canary:  # an Argo Rollout: tests/infra/test_canary.py
            assert dep["kind"] == "Rollout" and d["strategy"]["canary"]["maxSurge"] == spec.update_strategy.max_surge
        else:
            assert d["strategy"]["type"] == "RollingUpdate"
            assert d["strategy"]["rollingUpdate"] == {
                "maxSurge": spec.update_strategy.max_surge, "maxUnavailable": spec.update_strategy.max_unavailable}
        pod = d["template"]["spec"]
        (c,) = pod["containers"]
        res = c["resources"]
        assert res["requests"]["cpu"] == spec.compute.cpu and res["requests"]["memory"] == spec.compute.mem
        assert res["limits"]["memory"] == spec.compute.mem
        if spec.compute.gpu:
            assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == str(spec.compute.gpu)
            assert GPU_TOLERATION in pod["tolerations"]
            assert pod["nodeSelector"] == {"myelin.dev/pool": "gpu"}
        else:
            assert "nvidia.com/gpu" not in res["limits"] and "tolerations" not in pod
            assert pod["nodeSelector"] == {"myelin.dev/pool": "cpu"}
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        env = {e["name"]: e.get("value") for e in c["env"]}
        alb_idle = run.config.get("myelin:ingress", {}).get("idle_timeout_seconds", 120)
        assert int(env["MYELIN_KEEP_ALIVE_TIMEOUT"]) > alb_idle  # the server never closes first: no ALB 502s
        startup = c["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= pods.get("startup_timeout_seconds", 600)
        pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pre_stop == pods.get("pre_stop_seconds", 10)
        assert pod["terminationGracePeriodSeconds"] >= pre_stop + math.ceil(spec.serving.drain_timeout.seconds) + 1
        ann = d["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == "8080"
        assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
        env = {e["name"] for e in c["env"]}
        assert {"MYELIN_API_SPEC", "PORT"} <= env


def test_pods_are_hardened(run):
    for dep in deployments(run).values():
        pod = dep["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        sc = pod["containers"][0]["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"] and sc["runAsUser"] > 0
    for sa in run.k8s("ServiceAccount"):
        assert sa.inputs["automountServiceAccountToken"] is False


def test_scaled_objects_map_cortex_autoscaling(run):
    objs = {o.inputs["metadata"]["name"]: o.inputs["spec"] for o in run.k8s("ScaledObject")}
    for name, dep in deployments(run).items():
        spec = spec_of(dep)
        so = objs[name]
        a = spec.autoscaling
        assert so["scaleTargetRef"]["name"] == name
        assert (so["minReplicaCount"], so["maxReplicaCount"]) == (a.min_replicas, a.max_replicas)
        trigger, *held = so["triggers"]
        # Scaled to zero: the HTTP add-on's trigger wakes it (tests/infra/test_scale_to_zero.py); else none.
        assert len(held) == (1 if a.min_replicas == 0 else 0)
        assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
        md = trigger["metadata"]
        assert md["serverAddress"] == "http://prometheus-server.monitoring.svc.cluster.local:80"
        assert f'myelin_in_flight_requests{{api="{name}",namespace="apis"}}' in md["query"]
        assert f"[{int(a.window.seconds)}s]" in md["query"]
        assert float(md["threshold"]) == spec.target_in_flight
        behavior = so["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behavior["scaleUp"]["stabilizationWindowSeconds"] == int(a.upscale_stabilization.seconds)
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] == int(a.downscale_stabilization.seconds)
        assert behavior["scaleUp"]["policies"][0]["value"] == round((a.max_upscale_factor - 1) * 100)
        assert behavior["scaleDown"]["policies"][0]["value"] == round((1 - a.max_downscale_factor) * 100)


def test_prod_overrides_reach_the_autoscaler(prod):
    objs = {o.inputs["metadata"]["name"]: o.inputs["spec"] for o in prod.k8s("ScaledObject")}
    assert objs["kmeans"]["minReplicaCount"] == 3 and objs["kmeans"]["maxReplicaCount"] == 30
    se = objs["sentence-embedding"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert se["scaleDown"]["stabilizationWindowSeconds"] == 1800  # the GPU API's 30m before it scales to zero
    assert objs["sentence-embedding"]["minReplicaCount"] == 0 and objs["sentence-embedding"]["cooldownPeriod"] == 1800


def test_services_and_pdbs(run):
    services = {s.inputs["metadata"]["name"]: s.inputs["spec"] for s in run.k8s("Service")}
    pdbs = {p.inputs["metadata"]["name"]: p.inputs["spec"] for p in run.k8s("PodDisruptionBudget")}
    for name, dep in deployments(run).items():
        labels = dep["spec"]["selector"]["matchLabels"]
        if spec_of(dep).rollout.canary:  # a canary's ping and pong Services (tests/infra/test_canary.py)
            assert name not in services and services[f"{name}-pong"]["selector"] == labels
        service = services[f"{name}-ping" if spec_of(dep).rollout.canary else name]
        assert service["selector"] == labels
        assert service["ports"][0]["targetPort"] == "http"
        assert pdbs[name]["selector"]["matchLabels"] == labels and pdbs[name]["maxUnavailable"] == 1


def test_ingresses_route_only_the_endpoint_on_a_shared_alb(run):
    https = "myelin:ingress" in run.config and run.config["myelin:ingress"].get("certificate_arn")
    deps = deployments(run)
    for ing in run.api_objects("Ingress"):
        name = ing.inputs["metadata"]["name"].removesuffix("-via-interceptor")
        spec = spec_of(deps[name])
        ann = ing.inputs["metadata"]["annotations"]
        assert ing.inputs["spec"]["ingressClassName"] == "alb"
        (rule,) = ing.inputs["spec"]["rules"]
        # Scaled to zero: through the interceptor in namespace keda (tests/infra/test_scale_to_zero.py).
        backend = ({"name": "keda-add-ons-http-interceptor-proxy", "port": {"number": 8080}}
                   if spec.autoscaling.min_replicas == 0 else {"name": name, "port": {"name": "http"}})
        if spec.rollout.canary:  # the action Argo Rollouts weighs (tests/infra/test_canary.py)
            backend = {"name": name, "port": {"name": "use-annotation"}}
        # One path per protocol the API speaks: its endpoint, <endpoint>/v1 (openai), /v2/models/<name> (oip).
        want = [(spec.endpoint, "Exact")] if "myelin" in spec.networking.protocols else []
        if "openai" in spec.networking.protocols:
            want.append((spec.endpoint + "/v1", "Prefix"))
        if "oip" in spec.networking.protocols:
            want.append((f"/v2/models/{spec.name}", "Prefix"))
        assert rule["http"]["paths"] == [{"path": path, "pathType": kind, "backend": {"service": backend}}
                                         for path, kind in want]
        visibility = spec.networking.visibility
        assert ann["alb.ingress.kubernetes.io/group.name"] == f"myelin-{run.stack}-{visibility}"
        assert ann["alb.ingress.kubernetes.io/scheme"] == ("internet-facing" if visibility == "public" else "internal")
        assert ann["alb.ingress.kubernetes.io/healthcheck-path"] == "/readyz"  # the API's, or the interceptor's
        assert ann["alb.ingress.kubernetes.io/target-type"] == "ip"
        if https:
            assert json.loads(ann["alb.ingress.kubernetes.io/listen-ports"]) == [{"HTTP": 80}, {"HTTPS": 443}]
            assert ann["alb.ingress.kubernetes.io/ssl-redirect"] == "443"
            assert ann["alb.ingress.kubernetes.io/certificate-arn"] == run.config["myelin:ingress"]["certificate_arn"]
            assert run.outputs["endpoints"][name].startswith("https://")
        else:
            assert json.loads(ann["alb.ingress.kubernetes.io/listen-ports"]) == [{"HTTP": 80}]
            assert "alb.ingress.kubernetes.io/certificate-arn" not in ann
        assert run.outputs["endpoints"][name].endswith(spec.endpoint)


def test_namespaces_are_labelled_for_pod_security(run):
    ns = {n.inputs["metadata"]["name"]: n.inputs["metadata"] for n in run.k8s("Namespace")}
    assert ns["apis"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for name, meta in ns.items():
        level = meta["labels"]["pod-security.kubernetes.io/enforce"]
        assert level == "restricted" or meta["annotations"]["myelin.dev/pss-exception"]


def test_network_policies_admit_only_the_load_balancer_and_prometheus(run):
    pols = {p.inputs["metadata"]["name"]: p.inputs["spec"] for p in run.k8s("NetworkPolicy")}
    assert pols["default-deny"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    subnets = {s.name: s.inputs for s in run.of_type("aws:ec2/subnet:Subnet")}
    public = {s["cidrBlock"] for s in subnets.values() if "kubernetes.io/role/elb" in s["tags"]}
    internal = {s["cidrBlock"] for s in subnets.values() if "kubernetes.io/role/internal-elb" in s["tags"]}
    nodes = {s["cidrBlock"] for n, s in subnets.items() if n.startswith(f"myelin-{run.stack}-private-")}
    # Internal load balancers have subnets of their own: no node or pod address is admitted as "the load balancer".
    assert internal and nodes and not any(ipaddress.ip_network(a).overlaps(ipaddress.ip_network(b))
                                          for a in internal for b in nodes)
    for name, dep in deployments(run).items():
        spec = spec_of(dep)
        pol = pols[name]
        assert pol["podSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
        assert pol["policyTypes"] == ["Ingress", "Egress"]
        lb, prom, *interceptor = pol["ingress"]
        assert len(interceptor) == (1 if spec.autoscaling.min_replicas == 0 else 0)
        cidrs = {p["ipBlock"]["cidr"] for p in lb["from"]}
        assert cidrs == (public if spec.networking.visibility == "public" else internal)
        assert prom["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
        assert all(p["ports"] == [{"port": 8080, "protocol": "TCP"}] for p in (lb, prom))
        dns, *declared = pol["egress"]
        assert dns["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
        assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
        assert [(d["to"][0]["ipBlock"]["cidr"], [p["port"] for p in d["ports"]]) for d in declared] == [
            (rule.cidr, rule.ports) for rule in spec.networking.egress]


def test_api_keys_come_from_a_secret_mounted_as_a_file(prod):
    dep = deployments(prod)["iris-classifier"]
    spec = spec_of(dep)
    assert spec.networking.auth is not None
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    # Not in the environment (subprocesses inherit it): a file in a Secret volume, named by <VAR>_FILE.
    assert spec.networking.auth.api_keys_env not in env
    path = env[spec.networking.auth.api_keys_env + "_FILE"]["value"]
    (secret,) = [s for s in prod.api_objects("Secret") if s.inputs["metadata"].get("namespace") == "apis"]
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"] == {"secretName": secret.inputs["metadata"]["name"], "defaultMode": 0o440}
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True and path == mount["mountPath"] + "/keys"
    assert is_secret(secret.inputs["stringData"])  # never stored in plain text in the state
    assert unwrap_secrets(secret.inputs["stringData"])["keys"]
    # And the AsyncAPI's gateway (tests/infra/test_asyncapi.py).
    assert "api_keys" in prod.secret_outputs
    assert set(prod.outputs["api_keys"]) == {"iris-classifier", "hyperparameter-search"}


def test_oip_server_routes_are_answered_by_the_load_balancer(run):
    """/v2, /v2/health/live and /v2/health/ready: one Ingress per load balancer (visibility) serving APIs, in its
    IngressGroup, whose paths are fixed-response actions (no API answers them); the per-model routes go to the
    APIs speaking oip (test_ingresses_route_only_the_endpoint_on_a_shared_alb)."""
    server = run.api_objects("Ingress", "oip-server-routes")
    api_ingresses = [i for i in run.k8s("Ingress") if i not in server]
    groups = {i.inputs["metadata"]["annotations"]["alb.ingress.kubernetes.io/group.name"] for i in api_ingresses}
    assert {i.inputs["metadata"]["annotations"]["alb.ingress.kubernetes.io/group.name"] for i in server} == groups
    assert len(server) == len(groups)
    for ing in server:
        ann = ing.inputs["metadata"]["annotations"]
        (rule,) = ing.inputs["spec"]["rules"]
        answers = {}
        for path in rule["http"]["paths"]:
            assert path["pathType"] == "Exact" and path["backend"]["service"]["port"] == {"name": "use-annotation"}
            action = json.loads(ann["alb.ingress.kubernetes.io/actions." + path["backend"]["service"]["name"]])
            assert action["type"] == "fixed-response" and action["fixedResponseConfig"]["statusCode"] == "200"
            assert action["fixedResponseConfig"]["contentType"] == "application/json"
            answers[path["path"]] = json.loads(action["fixedResponseConfig"]["messageBody"])
        assert answers == {"/v2": {"name": "myelin", "version": "0.1.0", "extensions": ["binary_tensor_data"]},
                           "/v2/health/live": {"live": True}, "/v2/health/ready": {"ready": True}}
        # The same load-balancer settings as the group's API Ingresses (they must agree across a group).
        same = [i for i in api_ingresses if i.inputs["metadata"]["annotations"]["alb.ingress.kubernetes.io/group.name"]
                == ann["alb.ingress.kubernetes.io/group.name"]]
        for key in ("scheme", "subnets", "inbound-cidrs", "listen-ports", "load-balancer-attributes", "tags"):
            assert ann["alb.ingress.kubernetes.io/" + key] == same[0].inputs["metadata"]["annotations"][
                "alb.ingress.kubernetes.io/" + key], key
