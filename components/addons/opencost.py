"""OpenCost: per-node prices and per-container allocations in Prometheus, the inputs of the cost recording rules
(components/observability/cost.py).

It reads the cluster from the Kubernetes API and usage from the stack's Prometheus, prices every node from the
AWS public price list (the region's EC2 offer file, downloaded over HTTPS through the NAT gateway: no IAM needed)
and exports `node_*_hourly_cost` and `container_*_allocation`, which Prometheus scrapes through the Service's
`prometheus.io/*` annotations. Spot nodes (EKS label `eks.amazonaws.com/capacityType: SPOT`) are priced from the
account's EC2 spot data feed when `myelin:observability.cost.spot_data_feed` names it: OpenCost then gets an IRSA
role that may list and read that bucket (prefix) only. Without the feed, OpenCost prices a spot node at its
on-demand price (an overestimate). Without internet egress (`nat: none`) it falls back to its default prices.
The UI and the MCP server are off (Grafana shows the costs); its own KSM-style series are off too (the stack
runs kube-state-metrics), so `kube_pod_labels` has one source.
"""

from __future__ import annotations

from typing import Any

from .. import versions
from ..cluster import SYSTEM_NODE_SELECTOR
from ..observability.cost import SpotDataFeed
from .base import MONITORING_NAMESPACE, AddonContext

SERVICE_ACCOUNT = "opencost"
API_PORT = 9003  # the chart's opencost.exporter.apiPort: /metrics and the allocation API
#: OpenCost's default AWS price ratios (opencost configs/aws.json), kept when the pricing ConfigMap carries the
#: spot feed settings: they only split a node's price between CPU, RAM and GPU (myelin.cost mirrors them).
DEFAULT_AWS_PRICES = {"CPU": "0.031611", "spotCPU": "0.006655", "RAM": "0.004237", "spotRAM": "0.000892",
                      "GPU": "0.95", "storage": "0.00005479452"}


def spot_feed_policy(feed: SpotDataFeed, partition: str = "aws") -> dict[str, Any]:
    """Read-only access to the spot data feed's files (OpenCost lists them by day, then reads them)."""
    bucket = f"arn:{partition}:s3:::{feed.bucket}"
    prefix = f"{feed.prefix.strip('/')}/" if feed.prefix.strip("/") else ""
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": bucket,
         "Condition": {"StringLike": {"s3:prefix": [f"{prefix}{feed.account_id}.*"]}}},
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"{bucket}/{prefix}{feed.account_id}.*"},
    ]}


class OpenCost:
    def __init__(self, ctx: AddonContext):
        cost = ctx.config.observability.cost
        values: dict[str, Any] = {
            "service": {"annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(API_PORT)}},
            "opencost": {
                "exporter": {
                    "defaultClusterId": f"myelin-{ctx.config.stack}",
                    "resources": {"requests": {"cpu": "50m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
                },
                "prometheus": {"internal": {"enabled": True, "serviceName": "prometheus-server",
                                            "namespaceName": MONITORING_NAMESPACE, "port": 80}},
                "metrics": {"kubeStateMetrics": {"emitKsmV1Metrics": False, "emitKsmV1MetricsOnly": True}},
                "ui": {"enabled": False},
                "mcp": {"enabled": False},
                "nodeSelector": SYSTEM_NODE_SELECTOR,
            },
        }
        deps = []
        feed = cost.spot_data_feed
        if feed is not None:
            role = ctx.irsa("opencost", MONITORING_NAMESPACE, SERVICE_ACCOUNT, spot_feed_policy(feed))
            values["serviceAccount"] = {"create": True, "name": SERVICE_ACCOUNT,
                                        "annotations": {"eks.amazonaws.com/role-arn": role.arn}}
            values["opencost"]["customPricing"] = {"enabled": True, "createConfigmap": True, "provider": "aws",
                                                   "costModel": {
                **DEFAULT_AWS_PRICES, "description": "Myelin: AWS prices, spot from the account's spot data feed",
                "awsSpotDataBucket": feed.bucket, "awsSpotDataRegion": feed.region,
                "awsSpotDataPrefix": feed.prefix, "projectID": feed.account_id}}
            deps = role.resources
        self.release = ctx.release("opencost", versions.OPENCOST, MONITORING_NAMESPACE, values, depends_on=deps)
