"""Literals shared by the runtime and the infrastructure: one definition each, no dependencies.

The runtime exports these metrics and serves these routes; `components/` builds the KEDA trigger,
probes, dashboards and alerts from the same names. Rename nothing here without changing both halves
(the tests compare them).
"""

from __future__ import annotations

#: The effective api.yaml (after stack overrides) as JSON, set on every pod by the cluster.
SPEC_ENV = "MYELIN_API_SPEC"

#: Model cache directory (`predictor.model_uri`); the cluster points it at the pod's model volume.
MODEL_CACHE_ENV = "MYELIN_MODEL_CACHE"
#: Bound of the model cache in bytes (or a quantity like `20Gi`); least recently used models are evicted.
MODEL_CACHE_MAX_BYTES_ENV = "MYELIN_MODEL_CACHE_MAX_BYTES"
#: The model version (`myelin.model_files.resolve_model_version`) that `pulumi up` recorded in the pod
#: template: a new model at the same URI changes the template and rolls the pods; the runtime logs a
#: warning when the files it finds differ from it.
MODEL_VERSION_ENV = "MYELIN_MODEL_VERSION"

#: Port the container listens on (the image's `PORT`).
CONTAINER_PORT = 8080

#: How often the cluster's Prometheus scrapes API pods (autoscaling windows must hold at least two scrapes).
SCRAPE_INTERVAL_S = 15

#: Where the cluster mounts an API's keys (a Secret volume), and the variable suffix naming such a file:
#: with `networking.auth.api_keys_env: X`, the runtime reads the keys from the file named by `X_FILE`.
API_KEYS_DIR = "/var/run/secrets/myelin/api-keys"
API_KEYS_FILE_SUFFIX = "_FILE"

# -- routes ------------------------------------------------------------------------------------
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
METRICS_PATH = "/metrics"
INFO_PATH = "/info"
DOCS_PATH = "/docs"
OPENAPI_PATH = "/openapi.json"
DOCS_ASSETS_PATH = "/docs-assets"
#: The Open Inference Protocol's routes (`networking.protocols: [oip]`). The server-wide ones (`/v2`,
#: `/v2/health/live`, `/v2/health/ready`) are answered by every Myelin server and by `myelin local`'s router; the
#: per-model ones live under `/v2/models/<api name>` (optionally `/versions/<v>`).
OIP_PREFIX = "/v2"
OIP_HEALTH_PREFIX = "/v2/health"
OIP_MODELS_PREFIX = "/v2/models"
#: The OpenAI-compatible routes of an API (`networking.protocols: [openai]`) live under `<endpoint>` + this.
OPENAI_PREFIX = "/v1"
#: Paths an API's `networking.endpoint` may not take (nor any path under OIP_PREFIX).
RESERVED_PATHS = (HEALTH_PATH, READY_PATH, METRICS_PATH, INFO_PATH, DOCS_PATH, OPENAPI_PATH, DOCS_ASSETS_PATH,
                  OIP_PREFIX)

# -- protocols (`networking.protocols` in api.yaml) ------------------------------------------------
PROTOCOL_MYELIN = "myelin"  # POST <endpoint> (and an AsyncAPI's GET <endpoint>/<id>)
PROTOCOL_OPENAI = "openai"  # <endpoint>/v1/{chat/completions,completions,embeddings,models}
PROTOCOL_OIP = "oip"  # Open Inference Protocol v2 REST under /v2
PROTOCOLS = (PROTOCOL_MYELIN, PROTOCOL_OPENAI, PROTOCOL_OIP)

# -- metrics (Prometheus names as scraped; counters get `_total` in the exposition) -------------
METRIC_PREFIX = "myelin_"
REQUESTS = "myelin_requests"  # exposed as myelin_requests_total{api,status}
REQUESTS_TOTAL = "myelin_requests_total"
REQUEST_DURATION = "myelin_request_duration_seconds"  # histogram {api}
IN_FLIGHT = "myelin_in_flight_requests"  # gauge {api}: the autoscaling signal
QUEUE_LENGTH = "myelin_queue_length"  # gauge {api}
BATCH_SIZE = "myelin_batch_size"  # histogram {api}
READY_PROCESSES = "myelin_ready_processes"  # gauge {api}
MODEL_LOAD = "myelin_model_load_seconds"  # gauge {api}: how long the predictor took to load
STUCK = "myelin_stuck_predictions"  # gauge {api}: predicts still running past their request's deadline
WRITE_TIMEOUTS = "myelin_write_timeouts"  # exposed as myelin_write_timeouts_total{api}: connections aborted, client not reading
WRITE_TIMEOUTS_TOTAL = "myelin_write_timeouts_total"
#: gauge (no labels): request body bytes being received by a process's APIs now; MYELIN_MAX_BODY_BYTES_IN_FLIGHT bounds it
BODY_BYTES_IN_FLIGHT = "myelin_body_bytes_in_flight"
TARGET_IN_FLIGHT = "myelin_target_in_flight"  # gauge {api}: autoscaling.target_in_flight, for dashboards and alerts
#: Scale to zero (autoscaling.min_replicas 0): cold starts of an API (a replica woken for held requests), the
#: time from the first held request to that replica's readiness, and requests held right now (myelin local;
#: in the cluster the KEDA interceptor holds them: interceptor_request_concurrency).
COLD_STARTS = "myelin_cold_starts"  # exposed as myelin_cold_starts_total{api}; in a pod: 0, or 1 once woken
COLD_STARTS_TOTAL = "myelin_cold_starts_total"
COLD_START_DURATION = "myelin_cold_start_duration_seconds"  # histogram {api}
HELD_REQUESTS = "myelin_held_requests"  # gauge {api}
#: The runtime setting naming the request header that carries a request's arrival time at the load balancer
#: (the ALB's X-Amzn-Trace-Id), set by the cluster on APIs scaled to zero.
ARRIVAL_HEADER_ENV = "MYELIN_ARRIVAL_HEADER"
REJECTED = "myelin_rejected_requests"  # exposed as myelin_rejected_requests_total{api,reason}
REJECTED_TOTAL = "myelin_rejected_requests_total"
#: `reason` values of REJECTED: refused by admission control, API not (yet) ready, replica draining.
REJECT_OVERLOADED = "overloaded"
REJECT_NOT_READY = "not_ready"
REJECT_SHUTTING_DOWN = "shutting_down"
#: The longest Retry-After any Myelin server sends (seconds): every computed value is clamped to [1, this].
#: Ten minutes is longer than any cold start Myelin expects; a client that comes back earlier gets a fresh estimate.
MAX_RETRY_AFTER_S = 600
TIME_TO_FIRST_ITEM = "myelin_time_to_first_item_seconds"  # histogram {api}: streaming predictors only
#: A TrafficSplitter (kind: TrafficSplitter) is routing at the edge (`myelin local`'s router; in the cloud the ALB
#: and, for the shadow, the weighted APIs' runtimes): it counts the requests it sends to each of its APIs, and what became of each copy
#: for its shadow. The APIs' own metrics (myelin_requests_total...) count the same requests by `api`.
SPLIT_REQUESTS = "myelin_split_requests"  # exposed as myelin_split_requests_total{splitter,api}
SPLIT_REQUESTS_TOTAL = "myelin_split_requests_total"
#: In the cloud the ALB weighs a splitter's APIs and forwards each request unchanged, to the splitter's path: the
#: cluster sets this on each of its APIs' pods, `<splitter>=<path>` entries separated by commas, and the runtime
#: answers a POST on each path as on the API's own endpoint, counting it in SPLIT_REQUESTS{splitter,api}.
ENDPOINT_ALIASES_ENV = "MYELIN_ENDPOINT_ALIASES"
#: A splitter's shadow in the cloud: the cluster sets this on each API the splitter weighs, `<splitter>=<url>` entries
#: (`;api=<shadow>;timeout=<s>;max_body=<size>` after each URL; settings.py) separated by commas, and the runtime
#: copies each request it answers on that splitter's path (ENDPOINT_ALIASES_ENV) to the URL, the shadow's Service
#: and endpoint, in the background (shadow.py), counting SHADOW_REQUESTS and SHADOW_DROPPED.
SHADOW_TARGETS_ENV = "MYELIN_SHADOW_TARGETS"
SHADOW_REQUESTS = "myelin_shadow_requests"  # exposed as myelin_shadow_requests_total{splitter,api,status}
SHADOW_REQUESTS_TOTAL = "myelin_shadow_requests_total"
SHADOW_DROPPED = "myelin_shadow_dropped"  # exposed as myelin_shadow_dropped_total{splitter,api,reason}
SHADOW_DROPPED_TOTAL = "myelin_shadow_dropped_total"

# -- labels ------------------------------------------------------------------------------------
LABEL_API = "api"
LABEL_STATUS = "status"
LABEL_REASON = "reason"
LABEL_SPLITTER = "splitter"
#: Labels the cluster's scrape job adds to every sample of an API pod.
LABEL_NAMESPACE = "namespace"
LABEL_POD = "pod"

# -- AsyncAPI (kind: AsyncAPI) -------------------------------------------------------------------
# The cluster runs an AsyncAPI as two Deployments from one image: the gateway (submit and status
# routes, always up) and the workers (the predictor, scaled on the queue's depth, down to zero).
# Both get the store variables below; the role comes from `myelin serve --role` or MYELIN_ROLE.
ROLE_ENV = "MYELIN_ROLE"
ROLE_GATEWAY = "gateway"  # POST /<endpoint> and GET /<endpoint>/<id>; no predictor loaded
ROLE_WORKER = "worker"  # loads the predictor and runs queued jobs; serves only the control routes
ROLE_ALL = "all"  # both in one process (`myelin local`, and `myelin serve` by default)
ROLES = (ROLE_GATEWAY, ROLE_WORKER, ROLE_ALL)

#: Where the embedded (SQLite) job store keeps its files; default `.myelin` in the working directory.
STATE_DIR_ENV = "MYELIN_STATE_DIR"
#: Which job store runs: `sqlite` (embedded, the default) or `sqs` (SQS queue + S3 objects).
ASYNC_STORE_ENV = "MYELIN_ASYNC_STORE"
ASYNC_STORE_SQLITE = "sqlite"
ASYNC_STORE_SQS = "sqs"
#: With `sqs`: the API's queue, its dead-letter queue (both SQS queue URLs), and `s3://bucket/prefix/`
#: for request payloads, attempt markers and outcomes. boto3 reads AWS_REGION / AWS_ENDPOINT_URL itself.
ASYNC_QUEUE_URL_ENV = "MYELIN_ASYNC_QUEUE_URL"
ASYNC_DEAD_LETTER_QUEUE_URL_ENV = "MYELIN_ASYNC_DEAD_LETTER_QUEUE_URL"
ASYNC_STORAGE_URI_ENV = "MYELIN_ASYNC_STORAGE_URI"
#: Object keys under the storage prefix: `jobs/<id>/request`, `jobs/<id>/attempt`, `jobs/<id>/outcome`.
#: The bucket's lifecycle rule expires this prefix after `spec.retention_days` (jobs.retention, whole days).
ASYNC_JOBS_PREFIX = "jobs/"
#: SQS message attribute carrying attempts used by earlier messages of the same job (a job handed
#: back on shutdown is sent again as a new message).
ASYNC_PRIOR_ATTEMPTS_ATTRIBUTE = "myelin-prior-attempts"
#: What each role calls, for a least-privilege role scoped to the API's own queue, DLQ and prefix
#: (s3:ListBucket with an `s3:prefix` condition: without it S3 answers 403, not 404, for a missing key).
ASYNC_GATEWAY_ACTIONS = ("sqs:SendMessage", "sqs:GetQueueAttributes", "s3:PutObject", "s3:GetObject", "s3:ListBucket")
ASYNC_WORKER_ACTIONS = (
    "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:SendMessage",
    "sqs:GetQueueAttributes", "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket",
)
#: The worker sends exhausted jobs to the dead-letter queue itself (so their status says why); the
#: queue's redrive policy is only a backstop: maxReceiveCount = jobs.max_attempts + 1.

# Metrics of an AsyncAPI ({api}; counters get `_total` in the exposition).
ASYNC_QUEUE_DEPTH = "myelin_async_queue_depth"  # gauge {api}: jobs waiting to start
#: gauge {api}: bytes the job store holds for the API (what jobs.max_stored_bytes bounds); sampled from the store.
ASYNC_STORED_BYTES = "myelin_async_stored_bytes"
ASYNC_JOBS = "myelin_async_jobs"  # exposed as myelin_async_jobs_total{api,status}
ASYNC_JOBS_TOTAL = "myelin_async_jobs_total"
ASYNC_JOB_DURATION = "myelin_async_job_duration_seconds"  # histogram {api}: one attempt, start to outcome
#: `status` values of myelin_async_jobs_total.
JOB_SUBMITTED = "submitted"  # stored by the gateway (202 answered)
JOB_COMPLETED = "completed"
JOB_FAILED = "failed"  # predict raised (PredictorError or any exception) or timed out: no retry
JOB_DEAD_LETTERED = "dead_lettered"  # its worker stopped max_attempts times: failed, kept in the dead-letter store
JOB_RETRIED = "retried"  # started again after a worker stopped while running it
JOB_RETURNED = "returned"  # handed back to the queue unfinished on shutdown (not counted as an attempt)
JOB_STATUSES = (JOB_SUBMITTED, JOB_COMPLETED, JOB_FAILED, JOB_DEAD_LETTERED, JOB_RETRIED, JOB_RETURNED)
