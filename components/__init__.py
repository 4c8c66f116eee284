"""Myelin's infrastructure: Pulumi ComponentResources wired together by `__main__.py`."""

from .addons import Addons
from .apis import ApiNamespace, AsyncCloudArgs, AsyncPredictorApi, ColdStartResponder, OipServerRoutes, PredictorApi, PredictorApiArgs, TrafficSplitterRoute
from .cluster import Cluster
from .config import Settings, StackConfigError, load_settings, read_pulumi_config
from .network import Network

__all__ = [
    "Addons",
    "ApiNamespace",
    "AsyncCloudArgs",
    "AsyncPredictorApi",
    "Cluster",
    "ColdStartResponder",
    "OipServerRoutes",
    "Network",
    "PredictorApi",
    "PredictorApiArgs",
    "Settings",
    "StackConfigError",
    "TrafficSplitterRoute",
    "load_settings",
    "read_pulumi_config",
]
