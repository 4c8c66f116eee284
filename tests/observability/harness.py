"""A real Prometheus on 127.0.0.1 scraping a real `myelin serve` the way the cluster does.

`ObservedStack` runs the Pulumi program under mocks for a stack that deploys the test API
(tests/observability/apis/observed) and takes from what the program emits: the KEDA trigger query, the
Prometheus alert rules, the Grafana dashboards and the API pod's labels and annotations. It then starts
`myelin serve` for that folder (processes=2), a Prometheus whose `kubernetes-pods` job has the chart's
relabelling rules and a target carrying the `__meta_kubernetes_*` labels Kubernetes discovery would give
that pod, and an exporter of the kube-state-metrics, DCGM, KEDA interceptor and Fluent Bit series (synthetic: no cluster or
GPU here; names and labels as those exporters emit them) so every dashboard and alert query has data.

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

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
API_DIR = HERE / "apis" / "observed"
API = "observed"
NAMESPACE = "apis"
POD = "observed-6d5f7c9b8-x2x7q"
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
class Emitted:
    """What the Pulumi program emits for the test API, taken from a mocked run."""

    keda_query: str
    alerting_rules: dict[str, Any]
    dashboards: dict[str, dict[str, Any]]
    pod_labels: dict[str, str]
    pod_annotations: dict[str, str]
    #: The MYELIN_* variables the program sets on the pod that change what the runtime exports.
    pod_env: dict[str, str]


def emitted_for_test_api() -> Emitted:
    sys.path.insert(0, str(REPO / "tests"))
    from infra.harness import run_program, unwrap_secrets, user_config

    config = user_config("dev")
    config["myelin:apis_dir"] = "tests/observability/apis"
    # Scaled to zero, as a stack would ship it: the pod reads arrival times and exports cold starts.
    config["myelin:apis"] = {API: {"overrides": {"autoscaling": {"min_replicas": 0}}}}
    run = run_program("dev", config)
    (scaled,) = run.k8s("ScaledObject")
    (deployment,) = run.api_deployments()
    releases = {r.inputs["chart"]: unwrap_secrets(r.inputs) for r in run.of_type("kubernetes:helm.sh/v3:Release")}
    template = deployment.inputs["spec"]["template"]["metadata"]
    grafana = releases["grafana"]["values"]["dashboards"]["myelin"]
    return Emitted(
        keda_query=scaled.inputs["spec"]["triggers"][0]["metadata"]["query"],
        alerting_rules=releases["prometheus"]["values"]["serverFiles"]["alerting_rules.yml"],
        dashboards={name: json.loads(d["json"]) for name, d in grafana.items()},
        pod_labels=dict(template["labels"]),
        pod_annotations=dict(template["annotations"]),
        pod_env={e["name"]: e["value"] for e in deployment.inputs["spec"]["template"]["spec"]["containers"][0]["env"]
                 if e["name"] == "MYELIN_ARRIVAL_HEADER"},
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
@dataclass
class ObservedStack:
    workdir: Path
    emitted: Emitted = None  # type: ignore[assignment]
    api_port: int = 0
    prom_port: int = 0
    procs: list[subprocess.Popen] = field(default_factory=list)
    exporter: ThreadingHTTPServer | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/{API}"

    @property
    def prom_url(self) -> str:
        return f"http://127.0.0.1:{self.prom_port}"

    def start(self, prometheus: str) -> None:
        self.emitted = emitted_for_test_api()
        self.api_port = free_port()
        self.prom_port = free_port()
        self.exporter = ThreadingHTTPServer(("127.0.0.1", 0), _Exporter)
        threading.Thread(target=self.exporter.serve_forever, daemon=True).start()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.emitted.pod_env}
        env.pop("PORT", None)
        self.started_at = time.time()  # before the server starts: a request "arriving" earlier was held for it
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "myelin.cli", "serve", str(API_DIR), "--port", str(self.api_port)],
            stdout=open(self.workdir / "server.out", "wb"), stderr=open(self.workdir / "server.err", "wb"),
            env=env, cwd=str(REPO)))
        (self.workdir / "rules.yml").write_text(yaml.safe_dump(self.emitted.alerting_rules))
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(self._config()))
        self.procs.append(subprocess.Popen(
            [prometheus, f"--config.file={self.workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.prom_port}"],
            stdout=open(self.workdir / "prometheus.out", "wb"), stderr=subprocess.STDOUT))
        self._wait_ready()

    def _config(self) -> dict[str, Any]:
        pods_job = yaml.safe_load((HERE / "kubernetes-pods-job.yml").read_text())
        meta = {
            "__meta_kubernetes_namespace": NAMESPACE,
            "__meta_kubernetes_pod_name": POD,
            "__meta_kubernetes_pod_ip": "127.0.0.1",
            "__meta_kubernetes_pod_phase": "Running",
            "__meta_kubernetes_pod_node_name": NODE,
        }
        for key, value in self.emitted.pod_labels.items():
            meta[f"__meta_kubernetes_pod_label_{_sanitize(key)}"] = value
        for key, value in self.emitted.pod_annotations.items():
            meta[f"__meta_kubernetes_pod_annotation_{_sanitize(key)}"] = value
        # The pod listens on 8080 in the cluster; here the server has a free port of its own.
        meta["__meta_kubernetes_pod_annotation_prometheus_io_port"] = str(self.api_port)
        pods_job["static_configs"] = [{"targets": [f"127.0.0.1:{self.api_port}"], "labels": meta}]
        exporter = f"127.0.0.1:{self.exporter.server_address[1]}"
        return {
            "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
            "rule_files": [str(self.workdir / "rules.yml")],
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
                api = httpx.get(f"http://127.0.0.1:{self.api_port}/readyz", timeout=2).status_code
                prom = httpx.get(f"{self.prom_url}/-/ready", timeout=2).status_code
                if api == 200 and prom == 200 and self._workers_ready():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"stack not ready in {timeout}s: {self.logs()}")

    def _workers_ready(self) -> bool:
        text = httpx.get(f"http://127.0.0.1:{self.api_port}/metrics", timeout=2).text
        return f'myelin_ready_processes{{api="{API}"}} 2.0' in text

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
