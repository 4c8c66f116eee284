"""The APIs in the cluster: what every kind shares (shared.py, autoscaling.py, namespace.py) and one module
per kind (realtime.py for `kind: RealtimeAPI`)."""

from .namespace import ApiNamespace
from .realtime import PredictorApi
from .shared import PredictorApiArgs

__all__ = ["ApiNamespace", "PredictorApi", "PredictorApiArgs"]
