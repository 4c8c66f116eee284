"""The APIs in the cluster: what every kind shares (shared.py, autoscaling.py, namespace.py) and one module
per kind (realtime.py for `kind: RealtimeAPI`, asyncapi.py for `kind: AsyncAPI`); scale to zero (scale_to_zero.py,
cold_start.py); models from S3 (model.py: the resolved version, the cache volume, the API's IAM scope)."""

from .asyncapi import AsyncCloudArgs, AsyncPredictorApi
from .cold_start import ColdStartResponder
from .namespace import ApiNamespace
from .oip_server import OipServerRoutes
from .realtime import PredictorApi
from .shared import PredictorApiArgs
from .splitter import TrafficSplitterRoute

__all__ = ["ApiNamespace", "AsyncCloudArgs", "AsyncPredictorApi", "ColdStartResponder", "OipServerRoutes", "PredictorApi",
           "PredictorApiArgs", "TrafficSplitterRoute"]
