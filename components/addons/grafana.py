"""Grafana with Myelin's dashboards (provisioned from the committed JSON files), reached by port-forward."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from .. import versions
from ..cluster import SYSTEM_NODE_SELECTOR
from ..observability import dashboards as dashboard_files
from ..observability.dashboards import DATASOURCE_UID
from .base import MONITORING_NAMESPACE, PROMETHEUS_URL, AddonContext

SERVICE = "grafana"  # `kubectl -n monitoring port-forward svc/grafana 3000:80`
ADMIN_SECRET = "grafana-admin"
PROVIDER = "myelin"


class Grafana:
    def __init__(self, ctx: AddonContext):
        password = random.RandomPassword(f"{ctx.name}-grafana-admin", length=32, special=False, opts=ctx.aws_opts)
        self.admin_password = pulumi.Output.secret(password.result)
        secret = k8s.core.v1.Secret(
            f"{ctx.name}-grafana-admin",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=ADMIN_SECRET, namespace=MONITORING_NAMESPACE),
            string_data={"admin-user": "admin", "admin-password": self.admin_password},
            opts=pulumi.ResourceOptions.merge(ctx.k8s_opts, pulumi.ResourceOptions(
                depends_on=[ctx.namespaces[MONITORING_NAMESPACE]])),
        )
        self.release = ctx.release(
            "grafana",
            versions.GRAFANA,
            MONITORING_NAMESPACE,
            {
                "fullnameOverride": SERVICE,
                "admin": {"existingSecret": ADMIN_SECRET, "userKey": "admin-user", "passwordKey": "admin-password"},
                "datasources": {"datasources.yaml": {"apiVersion": 1, "datasources": [{
                    "name": "Prometheus", "type": "prometheus", "uid": DATASOURCE_UID, "url": PROMETHEUS_URL,
                    "access": "proxy", "isDefault": True, "editable": False,
                }]}},
                "dashboardProviders": {"dashboardproviders.yaml": {"apiVersion": 1, "providers": [{
                    "name": PROVIDER, "orgId": 1, "folder": "Myelin", "type": "file", "disableDeletion": True,
                    "editable": False, "options": {"path": f"/var/lib/grafana/dashboards/{PROVIDER}"},
                }]}},
                # The committed dashboard files, as they are in the repository.
                "dashboards": {PROVIDER: {
                    name.removesuffix(".json"): {"json": text} for name, text in dashboard_files.load_all().items()
                }},
                # No internet access assumed: no plugins, no update checks, no phoning home.
                "plugins": [],
                "grafana.ini": {"analytics": {"check_for_updates": False, "reporting_enabled": False},
                                "users": {"allow_sign_up": False}, "auth.anonymous": {"enabled": False}},
                "persistence": {"enabled": False},  # dashboards are provisioned from files: nothing to keep
                "testFramework": {"enabled": False},
                "nodeSelector": SYSTEM_NODE_SELECTOR,
            },
            depends_on=[secret],
        )
