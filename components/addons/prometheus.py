"""Prometheus (scrapes the API pods; the autoscaler's source), with Alertmanager and kube-state-metrics.

Alert rules come from components/observability/rules.py (the same metric names as the KEDA trigger and the
dashboards); Alertmanager routes them to the stack's receiver.
"""

from __future__ import annotations

from typing import Any

from .. import versions
from ..cluster import SYSTEM_NODE_SELECTOR
from ..labels import API_POD_LABEL, CAPACITY_LABEL, POOL_LABEL
from ..observability.cost import cost_server_files
from ..observability.rules import alert_rules, alertmanager_config
from .base import MONITORING_NAMESPACE, AddonContext

ALERTMANAGER_SERVICE_ACCOUNT = "alertmanager"


class Prometheus:
    def __init__(self, ctx: AddonContext, api_names: list[str]):
        obs = ctx.config.observability
        receiver = obs.alerts.receiver
        alertmanager: dict[str, Any] = {
            "enabled": True,
            "persistence": {"enabled": False},  # silences do not outlive a restart: no EBS volume needed
            "config": alertmanager_config(receiver, ctx.config.region),
            "nodeSelector": SYSTEM_NODE_SELECTOR,
        }
        deps = []
        if receiver is not None and receiver.sns_topic_arn:
            role = ctx.irsa("alertmanager", MONITORING_NAMESPACE, ALERTMANAGER_SERVICE_ACCOUNT, {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "sns:Publish", "Resource": receiver.sns_topic_arn}],
            })
            alertmanager["serviceAccount"] = {"create": True, "name": ALERTMANAGER_SERVICE_ACCOUNT,
                                              "annotations": {"eks.amazonaws.com/role-arn": role.arn}}
            deps = role.resources
        self.release = ctx.release(
            "prometheus",
            versions.PROMETHEUS,
            MONITORING_NAMESPACE,
            {
                "server": {
                    "fullnameOverride": "prometheus-server",
                    "retention": obs.prometheus_retention,
                    # Short-lived autoscaling data: no EBS volume (and no CSI driver) needed.
                    "persistentVolume": {"enabled": False},
                    "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
                    "nodeSelector": SYSTEM_NODE_SELECTOR,
                },
                # Alert rules built from the same metric names as the dashboards and the KEDA trigger.
                "serverFiles": cost_server_files(obs, alert_rules(obs.alerts, api_names), api_names),
                "alertmanager": alertmanager,
                "prometheus-pushgateway": {"enabled": False},
                "prometheus-node-exporter": {"enabled": False},
                # Replicas, pending pods and node pools for the dashboards and alerts; only the labels they use.
                "kube-state-metrics": {
                    "enabled": True,
                    "metricLabelsAllowlist": [
                        f"nodes=[{POOL_LABEL},{CAPACITY_LABEL}]",
                        f"pods=[{API_POD_LABEL}]",
                    ],
                    "nodeSelector": SYSTEM_NODE_SELECTOR,
                },
            },
            depends_on=deps,
        )
