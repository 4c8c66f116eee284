"""Argo Rollouts: the controller behind `rollout.strategy: canary` (installed only when an API asks for it).

Chart argo-rollouts 2.41.0 (argoproj/argo-helm tag argo-rollouts-2.41.0, charts/argo-rollouts: Chart.yaml
appVersion v1.9.0; values.yaml `installCRDs: true` puts the Rollout, AnalysisTemplate, AnalysisRun, Experiment and
ClusterAnalysisTemplate CRDs in the release's templates, so they are created with the release and upgraded with
it; `keepCRDs: true` keeps them, and the Rollouts, on an uninstall). Every API's Rollout and AnalysisTemplates
come after this release (`PredictorApiArgs.after`), so the CRDs and the controller exist first and go last.

The controller runs AnalysisRuns itself: it queries the stack's Prometheus (monitoring namespace, no
NetworkPolicy in front of it) and patches the API's Ingress annotation with the canary's weight. It calls no AWS
API (target-group verification, `--aws-verify-target-group`, is off: the load balancer controller's readiness
gates on the API's pods keep a version's targets registered before it takes traffic).
"""

from __future__ import annotations

from .. import versions
from ..cluster import SYSTEM_NODE_SELECTOR
from .base import AddonContext

ARGO_ROLLOUTS_NAMESPACE = "argo-rollouts"


class ArgoRollouts:
    def __init__(self, ctx: AddonContext):
        ctx.namespace(ARGO_ROLLOUTS_NAMESPACE, "restricted", "")
        self.release = ctx.release("argo-rollouts", versions.ARGO_ROLLOUTS, ARGO_ROLLOUTS_NAMESPACE, {
            "installCRDs": True,
            "controller": {"nodeSelector": SYSTEM_NODE_SELECTOR},
        })
