"""Myelin's infrastructure: Pulumi ComponentResources wired together by `__main__.py`."""

from .addons import Addons
from .api_namespace import ApiNamespace
from .cluster import Cluster
from .config import Settings, StackConfigError, load_settings, read_pulumi_config
from .network import Network
from .predictor_api import PredictorApi, PredictorApiArgs

__all__ = [
    "Addons",
    "ApiNamespace",
    "Cluster",
    "Network",
    "PredictorApi",
    "PredictorApiArgs",
    "Settings",
    "StackConfigError",
    "load_settings",
    "read_pulumi_config",
]
