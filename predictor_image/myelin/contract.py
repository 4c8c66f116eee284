"""Literals shared by the runtime and the infrastructure: one definition each, no dependencies.

The runtime exports these metrics and serves these routes; `components/` builds the KEDA trigger,
probes, dashboards and alerts from the same names. Rename nothing here without changing both halves
(the tests compare them).
"""

from __future__ import annotations

#: The effective api.yaml (after stack overrides) as JSON, set on every pod by the cluster.
SPEC_ENV = "MYELIN_API_SPEC"

#: Port the container listens on (the image's `PORT`).
CONTAINER_PORT = 8080

# -- routes ------------------------------------------------------------------------------------
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
METRICS_PATH = "/metrics"
INFO_PATH = "/info"
DOCS_PATH = "/docs"
OPENAPI_PATH = "/openapi.json"
#: Paths an API's `networking.endpoint` may not take.
RESERVED_PATHS = (HEALTH_PATH, READY_PATH, METRICS_PATH, INFO_PATH, DOCS_PATH, OPENAPI_PATH)

# -- metrics (Prometheus names as scraped; counters get `_total` in the exposition) -------------
METRIC_PREFIX = "myelin_"
REQUESTS = "myelin_requests"  # exposed as myelin_requests_total{api,status}
REQUESTS_TOTAL = "myelin_requests_total"
REQUEST_DURATION = "myelin_request_duration_seconds"  # histogram {api}
IN_FLIGHT = "myelin_in_flight_requests"  # gauge {api}: the autoscaling signal
QUEUE_LENGTH = "myelin_queue_length"  # gauge {api}
BATCH_SIZE = "myelin_batch_size"  # histogram {api}
READY_PROCESSES = "myelin_ready_processes"  # gauge {api}
TIME_TO_FIRST_ITEM = "myelin_time_to_first_item_seconds"  # histogram {api}: streaming predictors only

# -- labels ------------------------------------------------------------------------------------
LABEL_API = "api"
LABEL_STATUS = "status"
#: Labels the cluster's scrape job adds to every sample of an API pod.
LABEL_NAMESPACE = "namespace"
LABEL_POD = "pod"
