"""A real Prometheus on 127.0.0.1 scraping real `myelin serve` processes the way the cluster does.

Test APIs under tests/observability/apis, one per kind of dashboard panel: `observed` (batched, two
processes, scaled to zero), `streamed` (a generator `predict`), `queued` (`kind: AsyncAPI`, embedded
SQLite store in a temporary MYELIN_STATE_DIR, gateway and worker in each of its two processes) and the
TrafficSplitter `split` (all its requests to `streamed`, copies to its shadow `shadowed`).

`ObservedStack` runs the Pulumi program under mocks for a stack that deploys `observed`, `streamed`, `shadowed`
and `split` and
takes from what it emits: the KEDA trigger query, the Prometheus alert rules, the Grafana dashboards and the
API pods' labels, annotations and the splitter's variables (MYELIN_ENDPOINT_ALIASES, MYELIN_SHADOW_TARGETS, the
shadow's Service URL pointed at its server here). The program does not deploy AsyncAPIs yet (README, AsyncAPI): `queued`'s
gateway pod gets the labels and annotations of the other API pods, its own name in place of theirs. It then
starts `myelin serve` for each folder, a Prometheus whose `kubernetes-pods` job has the chart's relabelling
rules and one target per API carrying the `__meta_kubernetes_*` labels Kubernetes discovery would give that
pod, and an exporter of the kube-state-metrics, DCGM, OpenCost, KEDA interceptor and Fluent Bit series (synthetic: no
cluster or GPU here; names and labels as those exporters emit them) so every dashboard and alert query has data.

Used by tests/observability/test_prometheus_e2e.py and by `make docs-images`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml

from components.labels import async_worker_deployment
from myelin import contract

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
API_DIR = HERE / "apis" / "observed"
API = "observed"
STREAMED = "streamed"  # a streaming RealtimeAPI
QUEUED = "queued"  # an AsyncAPI
SPLIT = "split"  # a TrafficSplitter: its path is answered by STREAMED, each request copied to SHADOWED
SHADOWED = "shadowed"
APIS = (API, STREAMED, QUEUED, SHADOWED)  # the servers (the splitter has none: the ALB in the cloud)
NAMESPACE = "apis"
POD = "observed-6d5f7c9b8-x2x7q"
PODS = {API: POD, STREAMED: "streamed-7f9c8d6b5-q4w8z", QUEUED: "queued-5c6d7f8b9-m3n7p",
        SHADOWED: "shadowed-8b7c6d5f4-t2v9k"}
#: The variables the program sets on a pod that change what its runtime answers and exports.
POD_ENV = ("MYELIN_ARRIVAL_HEADER", contract.ENDPOINT_ALIASES_ENV, contract.SHADOW_TARGETS_ENV)
NODE = "ip-10-0-128-10.us-west-2.compute.internal"
GPU_NODE = "ip-10-0-129-20.us-west-2.compute.internal"
GPU_POD = "sentence-embedding-5b7d9c6f4-k8m2p"
SCRAPE_S = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sanitize(name: str) -> str:
    """Kubernetes service discovery's label-name sanitising (same rule kube-state-metrics uses)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


@dataclass
class Pod:
    """An API pod's metadata as the program emits it."""

    labels: dict[str, str]
    annotations: dict[str, str]
    #: The MYELIN_* variables the program sets on the pod that change what the runtime exports.
    env: dict[str, str]


@dataclass
class Emitted:
    """What the Pulumi program emits for the test APIs, taken from a mocked run."""

    #: `observed`'s KEDA trigger.
    keda_query: str
    alerting_rules: dict[str, Any]
    recording_rules: dict[str, Any]  # the cost rules over OpenCost's series
    dashboards: dict[str, dict[str, Any]]
    pods: dict[str, Pod]


def emitted_for_test_api() -> Emitted:
    sys.path.insert(0, str(REPO / "tests"))
    from infra.harness import run_program, unwrap_secrets, user_config

    config = user_config("dev")
    config["myelin:apis_dir"] = "tests/observability/apis"
    # `observed` scaled to zero, as a stack would ship it: the pod reads arrival times and exports cold starts.
    config["myelin:apis"] = {API: {"overrides": {"autoscaling": {"min_replicas": 0}}}, STREAMED: {}, SHADOWED: {},
                             SPLIT: {}}
    run = run_program("dev", config)
    (scaled,) = [so for so in run.k8s("ScaledObject") if so.inputs["metadata"]["name"] == API]
    releases = {r.inputs["chart"]: unwrap_secrets(r.inputs) for r in run.of_type("kubernetes:helm.sh/v3:Release")}
    pods = {}
    for deployment in run.api_deployments():
        template = deployment.inputs["spec"]["template"]
        pods[deployment.inputs["metadata"]["name"]] = Pod(
            labels=dict(template["metadata"]["labels"]), annotations=dict(template["metadata"]["annotations"]),
            env={e["name"]: e["value"] for e in template["spec"]["containers"][0]["env"]
                 if e["name"] in POD_ENV})
    # Not deployed by the program yet: the AsyncAPI's gateway pod as the shared pod template would label it.
    like = pods[STREAMED]
    pods[QUEUED] = Pod(labels={k: QUEUED if v == STREAMED else v for k, v in like.labels.items()},
                       annotations=dict(like.annotations), env={})
    grafana = releases["grafana"]["values"]["dashboards"]["myelin"]
    return Emitted(
        keda_query=scaled.inputs["spec"]["triggers"][0]["metadata"]["query"],
        alerting_rules=releases["prometheus"]["values"]["serverFiles"]["alerting_rules.yml"],
        recording_rules=releases["prometheus"]["values"]["serverFiles"]["recording_rules.yml"],
        dashboards={name: json.loads(d["json"]) for name, d in grafana.items()},
        pods=pods,
    )


# ---------------------------------------------------------------------------------------------------- exporter
def synthetic_series() -> str:
    """kube-state-metrics 2.17, dcgm-exporter 4.8 and Fluent Bit 2.32 series, as those exporters name them."""
    pod_api = _sanitize("label_app.kubernetes.io/name")
    lines = [
        # kube-state-metrics (scraped through its Service with honor_labels: its own namespace label stays)
        f'kube_deployment_spec_replicas{{namespace="{NAMESPACE}",deployment="{API}"}} 2',
        f'kube_deployment_status_replicas_ready{{namespace="{NAMESPACE}",deployment="{API}"}} 2',
        f'kube_horizontalpodautoscaler_spec_max_replicas{{namespace="{NAMESPACE}",horizontalpodautoscaler="{API}"}} 2',
        f'kube_horizontalpodautoscaler_status_current_replicas{{namespace="{NAMESPACE}",horizontalpodautoscaler="{API}"}} 2',
        f'kube_deployment_spec_replicas{{namespace="{NAMESPACE}",deployment="{STREAMED}"}} 1',
        f'kube_deployment_status_replicas_ready{{namespace="{NAMESPACE}",deployment="{STREAMED}"}} 1',
        # The AsyncAPI's gateway (Deployment <api>) and workers (Deployment <api>-worker)
        f'kube_deployment_spec_replicas{{namespace="{NAMESPACE}",deployment="{QUEUED}"}} 1',
        f'kube_deployment_status_replicas_ready{{namespace="{NAMESPACE}",deployment="{QUEUED}"}} 1',
        f'kube_deployment_spec_replicas{{namespace="{NAMESPACE}",deployment="{async_worker_deployment(QUEUED)}"}} 2',
        f'kube_deployment_status_replicas_ready{{namespace="{NAMESPACE}",deployment="{async_worker_deployment(QUEUED)}"}} 2',
        f'kube_node_labels{{node="{NODE}",label_myelin_dev_pool="cpu",label_myelin_dev_capacity="spot"}} 1',
        f'kube_node_labels{{node="{GPU_NODE}",label_myelin_dev_pool="gpu",label_myelin_dev_capacity="on_demand"}} 1',
        f'kube_pod_status_phase{{namespace="{NAMESPACE}",pod="{POD}",uid="u1",phase="Running"}} 1',
        f'kube_pod_status_phase{{namespace="{NAMESPACE}",pod="{POD}",uid="u1",phase="Pending"}} 0',
        f'kube_pod_status_phase{{namespace="{NAMESPACE}",pod="{GPU_POD}",uid="u2",phase="Pending"}} 1',
        f'kube_pod_container_resource_requests{{namespace="{NAMESPACE}",pod="{GPU_POD}",uid="u2",container="predictor",'
        f'node="",resource="nvidia_com_gpu",unit="integer"}} 1',
        f'kube_pod_labels{{namespace="{NAMESPACE}",pod="{POD}",uid="u1",{pod_api}="{API}"}} 1',
        f'kube_pod_labels{{namespace="{NAMESPACE}",pod="{GPU_POD}",uid="u2",{pod_api}="sentence-embedding"}} 1',
        # dcgm-exporter with Kubernetes mapping: the GPU's workload in namespace/pod/container
        *(f'{metric}{{gpu="0",UUID="GPU-5a1c",device="nvidia0",modelName="Tesla T4",Hostname="{GPU_NODE}",'
          f'container="predictor",namespace="{NAMESPACE}",pod="{GPU_POD}"}} {value}'
          for metric, value in (("DCGM_FI_DEV_GPU_UTIL", 37), ("DCGM_FI_DEV_FB_USED", 2210), ("DCGM_FI_DEV_FB_FREE", 12700))),
        # KEDA HTTP add-on interceptor (OpenTelemetry Prometheus exporter, docs 0.15 reference/metrics.md)
        f'interceptor_request_concurrency{{route_name="{API}",route_namespace="{NAMESPACE}"}} 0',
        # OpenCost 1.120 (pkg/costmodel/metrics.go): node prices, container allocations (its Service, honor_labels)
        *(f'{metric}{{instance="{node}",node="{node}",instance_type="{itype}",region="us-west-2",'
          f'provider_id="aws:///us-west-2a/{node}",arch="amd64",uid="{node}"}} {value}'
          for node, itype, prices in ((NODE, "m6i.large", (0.0312, 0.0042, 0.0, 0.096)),
                                      (GPU_NODE, "g4dn.xlarge", (0.0145, 0.0019, 0.4367, 0.526)))
          for metric, value in zip(("node_cpu_hourly_cost", "node_ram_hourly_cost", "node_gpu_hourly_cost",
                                    "node_total_hourly_cost"), prices)),
        *(f'{metric}{{namespace="{NAMESPACE}",pod="{pod}",container="predictor",instance="{node}",node="{node}",'
          f'uid="{uid}"}} {value}'
          for pod, node, uid, allocations in ((POD, NODE, "u1", (0.5, 2**30, None)),
                                              (GPU_POD, GPU_NODE, "u2", (2, 8 * 2**30, 1)))
          for metric, value in zip(("container_cpu_allocation", "container_memory_allocation_bytes",
                                    "container_gpu_allocation"), allocations) if value is not None),
        # Fluent Bit's /api/v1/metrics/prometheus
        'fluentbit_output_errors_total{name="cloudwatch_logs.0"} 0',
        'fluentbit_output_retries_failed_total{name="cloudwatch_logs.0"} 0',
    ]
    return "\n".join(lines) + "\n"


class _Exporter(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = synthetic_series().encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain; version=0.0.4")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


# ---------------------------------------------------------------------------------------------------- the stack
#: Processes `myelin serve` runs per API (serving.processes in its api.yaml), awaited before the load starts.
PROCESSES = {API: 2, STREAMED: 1, QUEUED: 2, SHADOWED: 1}


@dataclass
class ObservedStack:
    workdir: Path
    emitted: Emitted = None  # type: ignore[assignment]
    ports: dict[str, int] = field(default_factory=dict)
    prom_port: int = 0
    procs: list[subprocess.Popen] = field(default_factory=list)
    exporter: ThreadingHTTPServer | None = None

    @property
    def api_port(self) -> int:
        return self.ports[API]

    @property
    def api_url(self) -> str:
        return self.url(API)

    def url(self, api: str) -> str:
        return f"http://127.0.0.1:{self.ports[api]}/{api}"

    @property
    def prom_url(self) -> str:
        return f"http://127.0.0.1:{self.prom_port}"

    def start(self, prometheus: str) -> None:
        self.emitted = emitted_for_test_api()
        self.ports = {api: free_port() for api in APIS}
        self.prom_port = free_port()
        self.exporter = ThreadingHTTPServer(("127.0.0.1", 0), _Exporter)
        threading.Thread(target=self.exporter.serve_forever, daemon=True).start()
        self.started_at = time.time()  # before the server starts: a request "arriving" earlier was held for it
        for api in APIS:
            env = {**os.environ, "PYTHONUNBUFFERED": "1", **self._pod_env(api),
                   "MYELIN_STATE_DIR": str(self.workdir / "state")}  # the AsyncAPI's SQLite store
            env.pop("PORT", None)
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "myelin.cli", "serve", str(HERE / "apis" / api), "--port", str(self.ports[api])],
                stdout=open(self.workdir / f"server-{api}.out", "wb"),
                stderr=open(self.workdir / f"server-{api}.err", "wb"), env=env, cwd=str(REPO)))
        (self.workdir / "rules.yml").write_text(yaml.safe_dump(self.emitted.alerting_rules))
        (self.workdir / "recording.yml").write_text(yaml.safe_dump(self.emitted.recording_rules))
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(self._config()))
        self.procs.append(subprocess.Popen(
            [prometheus, f"--config.file={self.workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.prom_port}"],
            stdout=open(self.workdir / "prometheus.out", "wb"), stderr=subprocess.STDOUT))
        self._wait_ready()

    def _pod_env(self, api: str) -> dict[str, str]:
        """The pod's variables, the shadow's Service (`http://<shadow>.<namespace>.svc.cluster.local.`) being its
        server on 127.0.0.1 here."""
        env = dict(self.emitted.pods[api].env)
        shadows = env.get(contract.SHADOW_TARGETS_ENV)
        if shadows:
            service = f"http://{SHADOWED}.{NAMESPACE}.svc.cluster.local."
            assert service in shadows, shadows
            env[contract.SHADOW_TARGETS_ENV] = shadows.replace(service, f"http://127.0.0.1:{self.ports[SHADOWED]}")
        return env

    def split_url(self) -> str:
        """The splitter's path on the server of the API it weighs (where the ALB's weighted forward lands)."""
        return f"http://127.0.0.1:{self.ports[STREAMED]}/{SPLIT}"

    def _config(self) -> dict[str, Any]:
        pods_job = yaml.safe_load((HERE / "kubernetes-pods-job.yml").read_text())
        pods_job["static_configs"] = []
        for api in APIS:
            pod = self.emitted.pods[api]
            meta = {
                "__meta_kubernetes_namespace": NAMESPACE,
                "__meta_kubernetes_pod_name": PODS[api],
                "__meta_kubernetes_pod_ip": "127.0.0.1",
                "__meta_kubernetes_pod_phase": "Running",
                "__meta_kubernetes_pod_node_name": NODE,
            }
            for key, value in pod.labels.items():
                meta[f"__meta_kubernetes_pod_label_{_sanitize(key)}"] = value
            for key, value in pod.annotations.items():
                meta[f"__meta_kubernetes_pod_annotation_{_sanitize(key)}"] = value
            # The pod listens on 8080 in the cluster; here each server has a free port of its own.
            meta["__meta_kubernetes_pod_annotation_prometheus_io_port"] = str(self.ports[api])
            pods_job["static_configs"].append({"targets": [f"127.0.0.1:{self.ports[api]}"], "labels": meta})
        exporter = f"127.0.0.1:{self.exporter.server_address[1]}"
        return {
            "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
            "rule_files": [str(self.workdir / "rules.yml"), str(self.workdir / "recording.yml")],
            "scrape_configs": [
                pods_job,
                {"job_name": "kubernetes-service-endpoints", "honor_labels": True,
                 "static_configs": [{"targets": [exporter], "labels": {"node": GPU_NODE}}]},
            ],
        }

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise AssertionError(f"{proc.args[0]} exited with {proc.returncode}: {self.logs()}")
            try:
                apis = [httpx.get(f"http://127.0.0.1:{self.ports[api]}/readyz", timeout=2).status_code for api in APIS]
                prom = httpx.get(f"{self.prom_url}/-/ready", timeout=2).status_code
                if apis == [200] * len(APIS) and prom == 200 and all(self._workers_ready(api) for api in APIS):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"stack not ready in {timeout}s: {self.logs()}")

    def _workers_ready(self, api: str) -> bool:
        text = httpx.get(f"http://127.0.0.1:{self.ports[api]}/metrics", timeout=2).text
        return f'myelin_ready_processes{{api="{api}"}} {PROCESSES[api]:.1f}' in text

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.workdir.glob("*.out")))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.exporter is not None:
            self.exporter.shutdown()
            self.exporter.server_close()

    # ------------------------------------------------------------------------------------------------ queries
    def query(self, expr: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.prom_url}/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
        return body["data"]["result"]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.prom_url}/api/v1/query_range",
                      params={"query": expr, "start": start, "end": end, "step": step}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
        return body["data"]["result"]

    def wait_for(self, expr: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if result:
                return result
            time.sleep(0.5)
        return result


# ---------------------------------------------------------------------------------------------------- load
class Load:
    """`clients` threads posting back to back (one of them asking for failures) until stopped; counts statuses."""

    def __init__(self, url: str, clients: int, failing: int = 1):
        self.url = url
        self.clients = clients
        self.failing = failing
        self.stop_event = threading.Event()
        self.statuses: dict[int, int] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _run(self, fail: bool) -> None:
        with httpx.Client(timeout=15) as client:
            while not self.stop_event.is_set():
                try:
                    status = client.post(self.url, json={"fail": fail}).status_code
                except httpx.HTTPError:
                    status = 0
                with self._lock:
                    self.statuses[status] = self.statuses.get(status, 0) + 1

    def start(self) -> "Load":
        for i in range(self.clients):
            t = threading.Thread(target=self._run, args=(i < self.failing,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> dict[int, int]:
        self.stop_event.set()
        for t in self._threads:
            t.join(timeout=20)
        return dict(self.statuses)


class Jobs:
    """Submits AsyncAPI jobs at a steady rate until stopped, reading the status of each right after."""

    def __init__(self, url: str, interval_s: float = 0.2):
        self.url = url
        self.interval_s = interval_s
        self.stop_event = threading.Event()
        self.statuses: dict[str, int] = {}  # "submit 202", "status 200", ...
        self._thread = threading.Thread(target=self._run, daemon=True)

    def submit(self, client: httpx.Client, payload: dict[str, Any]) -> str | None:
        r = client.post(self.url, json=payload)
        self._count(f"submit {r.status_code}")
        return r.json()["id"] if r.status_code == 202 else None

    def _count(self, key: str) -> None:
        self.statuses[key] = self.statuses.get(key, 0) + 1

    def _run(self) -> None:
        with httpx.Client(timeout=15) as client:
            while not self.stop_event.wait(self.interval_s):
                try:
                    job = self.submit(client, {"n": 1})
                    if job:
                        self._count(f"status {client.get(f'{self.url}/{job}').status_code}")
                except httpx.HTTPError:
                    self._count("error")

    def start(self) -> "Jobs":
        self._thread.start()
        return self

    def stop(self) -> dict[str, int]:
        self.stop_event.set()
        self._thread.join(timeout=20)
        return dict(self.statuses)


def burst(url: str, n: int) -> dict[int, int]:
    """n requests at once (past max_concurrency + max_queue_length): some are refused with 503."""
    barrier = threading.Barrier(n)
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def one() -> None:
        with httpx.Client(timeout=15) as client:
            barrier.wait()
            status = client.post(url, json={}).status_code
        with lock:
            statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return statuses
