"""Every pinned version the infrastructure uses, in one place, with the chart value keys the program sets.

Bump a chart here and `pulumi preview` shows exactly which release changes. `values` lists every key path
(dot-joined) the program sets in that chart's values; a path ending in a free-form map or list (a node
selector, annotations, extra arguments, a rules file) is listed whole. tests/infra/test_cloud_path.py fails
when the program sets a key not listed here: a new key must be checked against the chart's own values.yaml
at the pinned version (and its templates, where the default is commented out) before it is added.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Default EKS Kubernetes version (a stack may pin another in `myelin:cluster.version`).
KUBERNETES_VERSION = "1.34"


@dataclass(frozen=True)
class Chart:
    chart: str
    repo: str
    version: str
    #: Value paths the program sets, checked against the chart's values.yaml at `version`.
    values: tuple[str, ...] = ()
    #: Kubernetes minor versions the chart's controller supports (inclusive), where its project publishes them.
    kubernetes: tuple[str, str] | None = None


_SERVICE_ACCOUNT = ("serviceAccount.create", "serviceAccount.name", "serviceAccount.annotations")

# nvidia/k8s-device-plugin v0.17.1 deployments/helm/nvidia-device-plugin/values.yaml
NVIDIA_DEVICE_PLUGIN = Chart("nvidia-device-plugin", "https://nvidia.github.io/k8s-device-plugin", "0.17.1",
                             ("nodeSelector", "tolerations", "priorityClassName"))
# kubernetes-sigs/metrics-server tag metrics-server-helm-chart-3.13.0 charts/metrics-server/values.yaml
METRICS_SERVER = Chart("metrics-server", "https://kubernetes-sigs.github.io/metrics-server/", "3.13.0",
                       ("nodeSelector", "replicas"))
# cluster-autoscaler minor follows the Kubernetes minor: chart 9.52.1 ships CA 1.34.1
# (kubernetes/autoscaler tag cluster-autoscaler-chart-9.52.1, cluster-autoscaler/charts/cluster-autoscaler).
CLUSTER_AUTOSCALER = Chart(
    "cluster-autoscaler", "https://kubernetes.github.io/autoscaler", "9.52.1",
    ("cloudProvider", "awsRegion", "autoDiscovery.clusterName", "rbac.serviceAccount.name",
     "rbac.serviceAccount.annotations", "expanderPriorities", "extraArgs", "nodeSelector"),
    kubernetes=("1.34", "1.34"),
)
# aws/eks-charts stable/aws-load-balancer-controller chart 1.14.0 (controller v2.14.0).
AWS_LOAD_BALANCER_CONTROLLER = Chart(
    "aws-load-balancer-controller", "https://aws.github.io/eks-charts", "1.14.0",
    ("clusterName", "region", "vpcId", "replicaCount", *_SERVICE_ACCOUNT, "enableServiceMutatorWebhook",
     "enableShield", "enableWaf", "enableWafv2", "nodeSelector"),
)
# kedacore/charts tag v2.20.2 keda/values.yaml; KEDA 2.20 supports Kubernetes 1.33-1.35
# (kedacore/keda-docs content/docs/2.20/operate/cluster.md, "Kubernetes Compatibility").
# kedacore/charts v2.20.2 keda/values.yaml: podIdentity.aws.irsa.{enabled,roleArn} annotate the operator's
# ServiceAccount (templates/manager/serviceaccount.yaml); podAnnotations.keda goes on the operator's pods
# (templates/manager/deployment.yaml). Both set only when the stack has an AsyncAPI (its SQS scaler).
KEDA = Chart("keda", "https://kedacore.github.io/charts", "2.20.2",
             ("nodeSelector", "podIdentity.aws.irsa.enabled", "podIdentity.aws.irsa.roleArn", "podAnnotations.keda"),
             kubernetes=("1.33", "1.35"))
# kedacore/charts commit c4b92e9 ("release v0.15.0") http-add-on/values.yaml: the KEDA HTTP add-on v0.15.0, whose
# interceptor holds requests while an API scales from zero (tested upstream with KEDA 2.20 on Kubernetes 1.34-1.36:
# kedacore/http-add-on v0.15.0 Makefile KEDA_VERSION and .github/workflows/e2e-tests.yaml). Installed only when an
# API has autoscaling.min_replicas 0.
KEDA_HTTP_ADD_ON = Chart(
    "keda-add-ons-http", "https://kedacore.github.io/charts", "0.15.0",
    ("interceptor.replicas.min", "interceptor.replicas.max", "interceptor.nodeSelector", "interceptor.podAnnotations",
     "interceptor.resources", "interceptor.responseHeaderTimeout", "interceptor.shutdownDelay",
     "interceptor.drainTimeout", "interceptor.terminationGracePeriodSeconds", "interceptor.pdb.enabled",
     "interceptor.pdb.maxUnavailable", "operator.nodeSelector", "operator.resources", "scaler.nodeSelector",
     "scaler.replicas", "scaler.resources"),
    kubernetes=("1.34", "1.36"),
)
#: The add-on's Services (templates/interceptor/service-proxy.yaml, service-admin.yaml, scaler/service.yaml at that
#: commit: `<chart name>-<values key>`), in the release namespace, and the interceptor pods' labels
#: (templates/interceptor/deployment.yaml).
KEDA_HTTP_PROXY_SERVICE = "keda-add-ons-http-interceptor-proxy"
KEDA_HTTP_PROXY_PORT = 8080
KEDA_HTTP_ADMIN_PORT = 9090  # GET /readyz: the ALB's health check of the interceptor
KEDA_HTTP_SCALER_SERVICE = "keda-add-ons-http-external-scaler"
KEDA_HTTP_SCALER_PORT = 9090
KEDA_HTTP_INTERCEPTOR_LABELS = {"app.kubernetes.io/component": "interceptor", "app.kubernetes.io/name": "http-add-on"}
# prometheus-community/helm-charts tag prometheus-27.41.0 charts/prometheus/values.yaml, with its subcharts
# alertmanager 1.27.* and kube-state-metrics 6.3.* (their values under the subchart's key).
PROMETHEUS = Chart(
    "prometheus", "https://prometheus-community.github.io/helm-charts", "27.41.0",
    ("server.fullnameOverride", "server.retention", "server.persistentVolume.enabled", "server.global.scrape_interval",
     "server.global.evaluation_interval", "server.nodeSelector", "serverFiles.alerting_rules.yml",
     "alertmanager.enabled", "alertmanager.persistence.enabled", "alertmanager.config", "alertmanager.nodeSelector",
     "alertmanager.serviceAccount.create", "alertmanager.serviceAccount.name", "alertmanager.serviceAccount.annotations",
     "prometheus-pushgateway.enabled", "prometheus-node-exporter.enabled", "kube-state-metrics.enabled",
     "kube-state-metrics.metricLabelsAllowlist", "kube-state-metrics.nodeSelector", "serverFiles.recording_rules.yml"),
)
# aws/eks-charts stable/aws-for-fluent-bit chart 0.1.35 (commit 3eb7a62, Fluent Bit 2.32.2).
AWS_FOR_FLUENT_BIT = Chart(
    "aws-for-fluent-bit", "https://aws.github.io/eks-charts", "0.1.35",
    (*_SERVICE_ACCOUNT, "cloudWatchLogs.enabled", "cloudWatchLogs.region", "cloudWatchLogs.logGroupName",
     "cloudWatchLogs.logGroupTemplate", "cloudWatchLogs.logStreamPrefix", "cloudWatchLogs.autoCreateGroup",
     "cloudWatch.enabled", "firehose.enabled", "kinesis.enabled", "elasticsearch.enabled", "tolerations",
     "annotations"),
)
# Grafana 12.3.1 (grafana/helm-charts tag grafana-10.5.15 charts/grafana/values.yaml).
GRAFANA = Chart(
    "grafana", "https://grafana.github.io/helm-charts", "10.5.15",
    ("fullnameOverride", "admin.existingSecret", "admin.userKey", "admin.passwordKey", "datasources",
     "dashboardProviders", "dashboards", "plugins", "grafana.ini", "persistence.enabled", "testFramework.enabled",
     "nodeSelector"),
)
# DCGM exporter 4.5.3-4.8.2 (NVIDIA/dcgm-exporter tag 4.5.3-4.8.2 deployment/values.yaml).
DCGM_EXPORTER = Chart("dcgm-exporter", "https://nvidia.github.io/dcgm-exporter/helm-charts", "4.8.2",
                      ("nodeSelector", "tolerations", "serviceMonitor.enabled", "service.annotations"))

# opencost/opencost-helm-chart tag opencost-2.5.17 charts/opencost/values.yaml (OpenCost 1.120.1): the keys below,
# and templates/deployment.yaml (EMIT_KSM_V1_METRICS*, PRICING_CONFIGMAP_NAME from customPricing, the UI and MCP
# containers/ports behind ui.enabled and mcp.enabled), templates/configmap-custom-pricing.yaml (costModel keys
# become the pricing ConfigMap's keys), templates/service.yaml (service.annotations), _helpers.tpl
# (prometheus.internal.* -> http://<serviceName>.<namespaceName>.svc.cluster.local:<port>).
OPENCOST = Chart(
    "opencost", "https://opencost.github.io/opencost-helm-chart", "2.5.17",
    ("service.annotations", *_SERVICE_ACCOUNT, "opencost.exporter.defaultClusterId", "opencost.exporter.resources",
     "opencost.prometheus.internal.enabled", "opencost.prometheus.internal.serviceName",
     "opencost.prometheus.internal.namespaceName", "opencost.prometheus.internal.port",
     "opencost.metrics.kubeStateMetrics.emitKsmV1Metrics", "opencost.metrics.kubeStateMetrics.emitKsmV1MetricsOnly",
     "opencost.ui.enabled", "opencost.mcp.enabled", "opencost.nodeSelector", "opencost.customPricing.enabled",
     "opencost.customPricing.createConfigmap", "opencost.customPricing.provider", "opencost.customPricing.costModel"),
)

# argoproj/argo-helm tag argo-rollouts-2.41.0 charts/argo-rollouts (Chart.yaml appVersion v1.9.0; values.yaml
# installCRDs, controller.nodeSelector). The Rollout and AnalysisTemplate fields Myelin writes are checked against
# that chart's templates/crds/{rollout,analysis-template}-crd.yaml (tests/infra/schemas, extracted by
# scripts/crd_schema.py) and argoproj/argo-rollouts v1.9.0 docs/features/traffic-management/alb.md.
# Installed only when an API has rollout.strategy canary.
ARGO_ROLLOUTS = Chart("argo-rollouts", "https://argoproj.github.io/argo-helm", "2.41.0",
                      ("installCRDs", "controller.nodeSelector"))

ALL_CHARTS = (
    NVIDIA_DEVICE_PLUGIN,
    METRICS_SERVER,
    CLUSTER_AUTOSCALER,
    AWS_LOAD_BALANCER_CONTROLLER,
    KEDA,
    KEDA_HTTP_ADD_ON,
    PROMETHEUS,
    AWS_FOR_FLUENT_BIT,
    GRAFANA,
    DCGM_EXPORTER,
    OPENCOST,
    ARGO_ROLLOUTS,
)

#: Base images of the predictor image (build arg BASE_IMAGE). The GPU one carries CUDA and cuDNN runtimes.
CPU_BASE_IMAGE = "python:3.11-slim-bookworm"
GPU_BASE_IMAGE = "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04"
#: PyTorch wheel indexes matching each base image (build arg TORCH_INDEX_URL): CPU wheels for the CPU image,
#: CUDA 12.6 wheels for the GPU image (its CUDA runtime; the AL2023/Bottlerocket NVIDIA AMIs' 570+ drivers run them).
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
GPU_TORCH_INDEX = "https://download.pytorch.org/whl/cu126"
