"""Scale to zero in the cluster (issue 13), under Pulumi's mocks: for an API with autoscaling.min_replicas 0 the
program emits the KEDA HTTP add-on, an InterceptorRoute, an Ingress through the interceptor and the cold-start
responder; APIs with min_replicas >= 1 keep the direct path. dev scales image-classifier to zero, prod the GPU API."""

from __future__ import annotations

import copy
import json

import pytest

from components import versions
from components.apis.shared import routed_paths
from components.apis.scale_to_zero import route_timeouts
from myelin.spec import ApiSpec

from .harness import StackRun, run_program, user_config

SCALED_TO_ZERO = {"dev": "image-classifier", "prod": "sentence-embedding"}


def _specs(run: StackRun) -> dict[str, ApiSpec]:
    out = {}
    for dep in run.api_deployments():
        env = {e["name"]: e.get("value") for e in dep.inputs["spec"]["template"]["spec"]["containers"][0]["env"]}
        out[dep.inputs["metadata"]["name"]] = ApiSpec.model_validate_json(env["MYELIN_API_SPEC"])
    return out


def test_the_stacks_ship_one_api_scaled_to_zero(run):
    specs = _specs(run)
    assert [n for n, s in specs.items() if s.autoscaling.min_replicas == 0] == [SCALED_TO_ZERO[run.stack]]
    if run.stack == "prod":
        assert specs["sentence-embedding"].compute.gpu == 1  # the GPU API: its GPU node pool drains to zero


def test_the_http_add_on_is_installed_after_keda(run):
    releases = {r.name: r for r in run.of_type("kubernetes:helm.sh/v3:Release")}
    (http,) = [r for r in releases.values() if r.inputs["chart"] == "keda-add-ons-http"]
    assert http.inputs["version"] == versions.KEDA_HTTP_ADD_ON.version == "0.15.0"
    assert http.inputs["namespace"] == "keda"
    values = http.inputs["values"]
    assert values["interceptor"]["replicas"]["min"] >= 2
    assert values["interceptor"]["podAnnotations"]["prometheus.io/port"] == "2223"
    keda = next(name for name, r in releases.items() if r.inputs["chart"] == "keda")
    node = run.node("kubernetes:helm.sh/v3:Release", http.name)
    assert keda in {d.name for d in run.direct_deps(node)}  # its interceptor ScaledObject needs KEDA's CRDs


def test_interceptor_route_targets_the_api_service_with_the_responder_as_fallback(run):
    name = SCALED_TO_ZERO[run.stack]
    spec = _specs(run)[name]
    (route,) = run.k8s("InterceptorRoute")
    r = route.inputs
    assert r["apiVersion"] == "http.keda.sh/v1beta1"
    assert r["metadata"] == {**r["metadata"], "name": name, "namespace": "apis"}
    service = next(s.inputs for s in run.k8s("Service") if s.inputs["metadata"]["name"] == name)
    assert r["spec"]["target"] == {"service": name, "portName": service["spec"]["ports"][0]["name"]}
    (rule,) = r["spec"]["rules"]
    # Every path the load balancer routes to the API (one per protocol: sentence-embedding's /v1 for openai).
    assert rule["paths"] == [{"value": path} for path, _ in routed_paths(spec)]
    assert rule["paths"][0] == {"value": spec.endpoint}
    assert r["spec"]["scalingMetric"] == {"concurrency": {"targetValue": max(1, round(spec.target_in_flight))}}
    assert r["spec"]["coldStart"] == {"fallback": {"service": {"name": "myelin-cold-start", "port": 8080}}}
    timeouts = r["spec"]["timeouts"]
    assert timeouts == route_timeouts(spec)
    seconds = {k: int(v.rstrip("s")) for k, v in timeouts.items()}
    assert seconds["readiness"] == spec.serving.timeout.seconds  # held at most serving.timeout
    assert seconds["readiness"] < seconds["request"]  # time left for the fallback's answer
    idle = run.config.get("myelin:ingress", {}).get("idle_timeout_seconds", 120)
    assert seconds["request"] <= idle  # the ALB never cuts a held request first


def test_the_scaled_object_wakes_on_held_requests_and_cools_down_to_zero(run):
    name = SCALED_TO_ZERO[run.stack]
    spec = _specs(run)[name]
    so = next(o for o in run.k8s("ScaledObject") if o.inputs["metadata"]["name"] == name)
    assert so.inputs["spec"]["minReplicaCount"] == 0
    assert so.inputs["spec"]["cooldownPeriod"] == spec.autoscaling.downscale_stabilization.seconds
    in_flight, push = so.inputs["spec"]["triggers"]
    assert in_flight["type"] == "prometheus"  # the same per-replica autoscaling as every API while it runs
    assert push == {"type": "external-push", "name": "held-requests", "metadata": {
        "scalerAddress": "keda-add-ons-http-external-scaler.keda:9090", "interceptorRoute": name}}
    # The route exists before the ScaledObject that names it (else KEDA's HPA gets no metric).
    route = next(r for r in run.k8s("InterceptorRoute"))
    so_node = run.node("kubernetes:keda.sh/v1alpha1:ScaledObject", so.name)
    assert route.name in {d.name for d in run.direct_deps(so_node)}
    # Every other RealtimeAPI's ScaledObject has its in-flight trigger alone and no cooldown of its own.
    for other in run.api_objects("ScaledObject"):
        if other.inputs["metadata"]["name"] != name:
            assert len(other.inputs["spec"]["triggers"]) == 1 and "cooldownPeriod" not in other.inputs["spec"]


def test_only_the_api_scaled_to_zero_goes_through_the_interceptor(run):
    name = SCALED_TO_ZERO[run.stack]
    ingresses = {i.inputs["metadata"]["name"]: i.inputs for i in run.k8s("Ingress")}
    via = ingresses[f"{name}-via-interceptor"]
    assert via["metadata"]["namespace"] == "keda"  # LBC has no ExternalName backends: the Ingress goes to the Service
    backend = via["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "keda-add-ons-http-interceptor-proxy", "port": {"number": 8080}}
    ann = via["metadata"]["annotations"]
    assert ann["alb.ingress.kubernetes.io/healthcheck-port"] == "9090"  # the interceptor's admin port
    assert ann["alb.ingress.kubernetes.io/healthcheck-path"] == "/readyz"
    for other_name, other in ingresses.items():
        if other_name == f"{name}-via-interceptor":
            continue
        assert other["metadata"]["namespace"] == "apis"  # min_replicas >= 1: the direct path, no extra hop
        if other_name.startswith("myelin-oip-server-"):  # the load balancer's own fixed responses (test_stacks.py)
            assert other["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"] == {
                "name": "use-annotation"}
        else:
            assert other["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == other_name
        # One ALB per visibility: the load-balancer-level annotations of the group agree.
        if other["metadata"]["annotations"]["alb.ingress.kubernetes.io/group.name"] == ann[
                "alb.ingress.kubernetes.io/group.name"]:
            for key in ("scheme", "subnets", "load-balancer-attributes", "inbound-cidrs", "listen-ports", "tags"):
                full = "alb.ingress.kubernetes.io/" + key
                assert other["metadata"]["annotations"][full] == ann[full], key


def test_network_policies_admit_the_interceptor_only_where_it_forwards(run):
    name = SCALED_TO_ZERO[run.stack]
    pols = {p.inputs["metadata"]["name"]: p.inputs["spec"] for p in run.k8s("NetworkPolicy")}
    interceptor = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}},
                   "podSelector": {"matchLabels": versions.KEDA_HTTP_INTERCEPTOR_LABELS}}
    assert pols[name]["ingress"][2] == {"from": [interceptor], "ports": [{"port": 8080, "protocol": "TCP"}]}
    responder = pols["myelin-cold-start"]
    assert responder["ingress"] == [{"from": [interceptor], "ports": [{"port": 8080, "protocol": "TCP"}]}]
    assert responder["egress"][1]["to"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"}
    for other, pol in pols.items():
        if other not in (name, "myelin-cold-start", "default-deny"):
            assert interceptor not in [peer for rule in pol.get("ingress", []) for peer in rule["from"]], other


def test_the_scaled_to_zero_api_reads_its_arrival_from_the_alb_trace_header(run):
    name = SCALED_TO_ZERO[run.stack]
    for dep in run.api_deployments():
        env = {e["name"]: e.get("value") for e in dep.inputs["spec"]["template"]["spec"]["containers"][0]["env"]}
        expected = "x-amzn-trace-id" if dep.inputs["metadata"]["name"] == name else None
        assert env.get("MYELIN_ARRIVAL_HEADER") == expected


def test_the_cold_start_responder(run):
    name = SCALED_TO_ZERO[run.stack]
    dep = next(d.inputs for d in run.k8s("Deployment") if d.inputs["metadata"]["name"] == "myelin-cold-start")
    assert dep["metadata"]["namespace"] == "apis" and dep["spec"]["replicas"] == 2
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["myelin", "cold-start"]
    env = {e["name"]: e["value"] for e in container["env"]}
    (api,) = json.loads(env["MYELIN_COLD_START_APIS"])
    spec = _specs(run)[name]
    assert api["name"] == name and api["endpoint"] == spec.endpoint
    assert api["timeout_seconds"] == spec.serving.timeout.seconds and api["estimate_seconds"] > 0
    assert env["MYELIN_PROMETHEUS_URL"].startswith("http://prometheus-server.monitoring")
    svc = next(s.inputs for s in run.k8s("Service") if s.inputs["metadata"]["name"] == "myelin-cold-start")
    assert svc["spec"]["ports"][0]["port"] == 8080  # the route's fallback port
    images = {i.name for i in run.of_type("docker-build:index:Image")}
    assert f"{run.stack}-myelin-cold-start" in images


@pytest.fixture(scope="module")
def bare() -> StackRun:
    """dev with every API at min_replicas >= 1."""
    config = copy.deepcopy(user_config("dev"))
    config["myelin:apis"]["image-classifier"]["overrides"]["autoscaling"]["min_replicas"] = 1
    return run_program("dev", config)


def test_a_stack_without_scale_to_zero_installs_none_of_it(bare):
    assert not bare.k8s("InterceptorRoute")
    assert not [r for r in bare.of_type("kubernetes:helm.sh/v3:Release") if r.inputs["chart"] == "keda-add-ons-http"]
    assert not [d for d in bare.k8s("Deployment") if d.inputs["metadata"]["name"] == "myelin-cold-start"]
    assert all(i.inputs["metadata"]["namespace"] == "apis" for i in bare.k8s("Ingress"))


def test_prod_gpu_pool_can_drain_to_zero_with_its_api(prod):
    """The GPU API scales to zero; its node groups have no floor, so the cluster autoscaler removes the last GPU node
    (and brings one back from zero for a pending GPU pod: the ASG node-template tags, test_cloud_path.py)."""
    gpu_groups = [g.inputs for g in prod.of_type("aws:eks/nodeGroup:NodeGroup")
                  if g.inputs["labels"]["myelin.dev/pool"] == "gpu"]
    assert gpu_groups and all(g["scalingConfig"]["minSize"] == 0 for g in gpu_groups)
    gpu_apis = [n for n, s in _specs(prod).items() if s.compute.gpu > 0]
    assert gpu_apis == ["sentence-embedding"] and _specs(prod)["sentence-embedding"].autoscaling.min_replicas == 0
