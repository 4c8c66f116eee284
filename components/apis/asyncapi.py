"""`AsyncPredictorApi` for `kind: AsyncAPI`: one API folder served in the cluster as a gateway and workers.

AWS, per API: an SQS queue and its dead-letter queue (SSE-SQS), an S3 bucket for the jobs (SSE-S3, public access
blocked, TLS only, expired by a lifecycle rule after the retention), and two IRSA roles limited to these three:
the gateway's (submit, read status) and the worker's (take, finish, hand back and dead-letter jobs). The actions
are those `myelin.asyncapi.store_sqs` calls (`myelin.contract.ASYNC_GATEWAY_ACTIONS` / `ASYNC_WORKER_ACTIONS`).

Kubernetes: the gateway Deployment (`myelin serve --role gateway`: small pods, no GPU, autoscaled on CPU between
GATEWAY_MIN_REPLICAS and GATEWAY_MAX_REPLICAS, its PodDisruptionBudget letting one go at a time) behind the same
Service, NetworkPolicy, Ingress and API keys as a RealtimeAPI; the worker Deployment (`--role
worker`: the spec's compute and GPU, no Service, no Ingress) scaled by a KEDA ScaledObject on the queue
(`aws-sqs-queue`), down to `autoscaling.min_replicas` (0 by default). KEDA reads the queue with the operator's
own IRSA role (a TriggerAuthentication with `podIdentity.provider: aws`); this component grants that role
`sqs:GetQueueAttributes` on this API's queue only.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from myelin import contract as c
from myelin.spec import AsyncApiSpec
from myelin.spec.fields import ComputeSpec

from ..labels import ASYNC_WORKER_SUFFIX
from ..irsa import irsa_role
from .autoscaling import number, plain
from .shared import Parts, api_image, PredictorApiArgs

#: Gateway pods: always at least two, so that a node drain or an AZ loss never stops submits (the PDB lets one go);
#: more as their CPU use grows, up to GATEWAY_MAX_REPLICAS.
GATEWAY_MIN_REPLICAS = 2
GATEWAY_MAX_REPLICAS = 10
#: The gateway's scaling signal: average CPU use across its pods as a share of their request (KEDA's `cpu` trigger,
#: kedacore/keda v2.20.2 pkg/scalers/cpu_memory_scaler.go: metricType Utilization, metadata `value`; the HPA reads
#: it from metrics-server). A gateway's work per request is CPU (parsing, API keys, JSON, boto3 request signing);
#: the wait on S3 and SQS runs in threads and costs none, so CPU follows the request rate. In-flight requests, the
#: RealtimeAPI signal, would mix the gateway's requests with the workers' under the API's one `api` label.
GATEWAY_CPU_UTILIZATION = 70
#: A gateway stores payloads and reads status objects (boto3 in threads, waiting on the network); it loads no
#: predictor. No CPU limit (as for every API pod): it may use more when the node has room.
GATEWAY_COMPUTE = ComputeSpec(cpu="100m", mem="512Mi")
#: SQS keeps a message at most 14 days: the dead-letter queue keeps dead jobs that long (AWS advises a DLQ
#: retention longer than its source queue's, as a moved message keeps its original enqueue time).
DEAD_LETTER_RETENTION_S = 14 * 86400
#: Days after which S3 removes the parts of an upload never completed (the runtime writes whole objects).
ABORT_UPLOADS_DAYS = 1
KEDA_OPERATOR_SERVICE_ACCOUNT = ("keda", "keda-operator")
IRSA_ROLE_ANNOTATION = "eks.amazonaws.com/role-arn"


@dataclass(frozen=True)
class AsyncCloudArgs:
    """What an AsyncAPI needs from the stack besides `PredictorApiArgs`."""

    region: str
    oidc_provider_arn: pulumi.Input[str]
    oidc_provider_url: pulumi.Input[str]
    #: The KEDA operator's IRSA role (Addons, when the stack has an AsyncAPI): its scaler reads the queue.
    keda_role: aws.iam.Role


def gateway_policy(queue_arn: str, dead_letter_arn: str, bucket_arn: str) -> dict[str, Any]:
    """Submit (payload object, then the message) and status (objects); the store's start-up checks."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "SubmitJobs", "Effect": "Allow", "Action": ["sqs:SendMessage"], "Resource": queue_arn},
            # open() checks both queues; the depth gauge reads the queue.
            {"Sid": "ReadQueues", "Effect": "Allow", "Action": ["sqs:GetQueueAttributes"],
             "Resource": [queue_arn, dead_letter_arn]},
            {"Sid": "JobObjects", "Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"],
             "Resource": f"{bucket_arn}/{c.ASYNC_JOBS_PREFIX}*"},
            # HeadBucket (open()) needs it; with it a missing job object is 404 rather than 403.
            {"Sid": "Bucket", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": bucket_arn},
        ],
    }


def worker_policy(queue_arn: str, dead_letter_arn: str, bucket_arn: str) -> dict[str, Any]:
    """Take jobs, finish them (outcome object, delete the message), hand them back (a new message, the attempt
    marker deleted), dead-letter exhausted ones; the store's start-up checks."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "TakeJobs", "Effect": "Allow",
             "Action": ["sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:ReceiveMessage", "sqs:SendMessage"],
             "Resource": queue_arn},
            {"Sid": "DeadLetter", "Effect": "Allow", "Action": ["sqs:SendMessage"], "Resource": dead_letter_arn},
            {"Sid": "ReadQueues", "Effect": "Allow", "Action": ["sqs:GetQueueAttributes"],
             "Resource": [queue_arn, dead_letter_arn]},
            {"Sid": "JobObjects", "Effect": "Allow", "Action": ["s3:DeleteObject", "s3:GetObject", "s3:PutObject"],
             "Resource": f"{bucket_arn}/{c.ASYNC_JOBS_PREFIX}*"},
            {"Sid": "Bucket", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": bucket_arn},
        ],
    }


def keda_policy(queue_arn: str) -> dict[str, Any]:
    """KEDA's aws-sqs-queue scaler makes one call, GetQueueAttributes (keda v2.20.2 aws_sqs_queue_scaler.go)."""
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "ReadQueueDepth", "Effect": "Allow", "Action": ["sqs:GetQueueAttributes"], "Resource": queue_arn}]}


def tls_only_bucket_policy(bucket_arn: str) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [{
        "Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
        "Resource": [bucket_arn, f"{bucket_arn}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }]}


def https_egress() -> k8s.networking.v1.NetworkPolicyEgressRuleArgs:
    """HTTPS to SQS, S3 and STS. A NetworkPolicy cannot name AWS endpoints (no DNS names, no prefix lists) and
    their addresses are public (S3's gateway endpoint keeps S3's public addresses) or, for interface endpoints
    (nat: none), in the private subnets, so the rule admits port 443 anywhere; the IRSA role bounds what the
    pods' credentials can do."""
    np = k8s.networking.v1
    return np.NetworkPolicyEgressRuleArgs(
        to=[np.NetworkPolicyPeerArgs(ip_block=np.IPBlockArgs(cidr="0.0.0.0/0"))],
        ports=[np.NetworkPolicyPortArgs(port=443, protocol="TCP")],
    )


class AsyncPredictorApi(pulumi.ComponentResource):
    url: pulumi.Output[str]

    def __init__(self, name: str, args: PredictorApiArgs, cloud: AsyncCloudArgs,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("myelin:apis:AsyncPredictorApi", name, None, opts)
        spec = args.spec
        if not isinstance(spec, AsyncApiSpec):
            raise TypeError(f"{spec.name}: AsyncPredictorApi serves kind AsyncAPI, not {spec.kind}")
        namespace = plain(args.namespace)
        aws_opts = pulumi.ResourceOptions(parent=self)
        tags = {"myelin:stack": args.stack, "myelin:api": spec.name}

        self.image = api_image(self, args)

        # ------------------------------------------------------------ the job store: queues and bucket
        self.dead_letter_queue = aws.sqs.Queue(
            f"{name}-dlq", sqs_managed_sse_enabled=True, message_retention_seconds=DEAD_LETTER_RETENTION_S,
            tags=tags, opts=aws_opts)
        self.queue = aws.sqs.Queue(
            f"{name}-queue",
            sqs_managed_sse_enabled=True,
            # A job still queued after the retention is past its 404 anyway (SQS keeps at most 14 days).
            message_retention_seconds=spec.queue_retention_seconds,
            # The worker receives with this same timeout (store_sqs.claim: ceil(spec.visibility_timeout)); the
            # queue's default covers any other receive.
            visibility_timeout_seconds=math.ceil(spec.visibility_timeout),
            # A backstop only: the worker dead-letters a job itself after jobs.max_attempts starts.
            redrive_policy=self.dead_letter_queue.arn.apply(lambda arn: json.dumps(
                {"deadLetterTargetArn": arn, "maxReceiveCount": spec.dead_letter_max_receive_count})),
            tags=tags,
            opts=aws_opts,
        )
        # Only this API's queue may use its dead-letter queue.
        self.redrive_allow = aws.sqs.RedriveAllowPolicy(
            f"{name}-dlq-source", queue_url=self.dead_letter_queue.url,
            redrive_allow_policy=self.queue.arn.apply(lambda arn: json.dumps(
                {"redrivePermission": "byQueue", "sourceQueueArns": [arn]})),
            opts=aws_opts)

        self.bucket = aws.s3.Bucket(
            f"{name}-jobs",
            bucket_prefix=f"myelin-{args.stack}-{spec.name}"[:36] + "-",
            # As the API's ECR repository: outside prod `pulumi destroy` empties it; in prod a bucket still
            # holding jobs stops the destroy (objects expire after the retention).
            force_destroy=args.force_delete_images,
            tags=tags,
            opts=aws_opts,
        )
        bucket_opts = pulumi.ResourceOptions(parent=self, depends_on=[self.bucket])
        self.bucket_ownership = aws.s3.BucketOwnershipControls(
            f"{name}-jobs", bucket=self.bucket.id,
            rule={"object_ownership": "BucketOwnerEnforced"}, opts=bucket_opts)
        self.public_access_block = aws.s3.BucketPublicAccessBlock(
            f"{name}-jobs", bucket=self.bucket.id, block_public_acls=True, block_public_policy=True,
            ignore_public_acls=True, restrict_public_buckets=True, opts=bucket_opts)
        self.encryption = aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-jobs", bucket=self.bucket.id,
            rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}}], opts=bucket_opts)
        self.bucket_policy = aws.s3.BucketPolicy(
            f"{name}-jobs", bucket=self.bucket.id,
            policy=self.bucket.arn.apply(lambda arn: json.dumps(tls_only_bucket_policy(arn))),
            # S3 refuses a policy while the public access block is being written.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.public_access_block]))
        self.lifecycle = aws.s3.BucketLifecycleConfiguration(
            f"{name}-jobs", bucket=self.bucket.id,
            rules=[{
                "id": "expire-jobs",
                "status": "Enabled",
                "filter": {"prefix": c.ASYNC_JOBS_PREFIX},
                # spec.retention_days: jobs.retention in whole days, rounded up (the runtime answers 404 from
                # the exact retention on; S3 deletes within a day after this).
                "expiration": {"days": spec.retention_days},
                "abort_incomplete_multipart_upload": {"days_after_initiation": ABORT_UPLOADS_DAYS},
            }],
            opts=bucket_opts)
        storage_uri = self.bucket.bucket.apply(lambda b: f"s3://{b}/")
        self.queue_url, self.dead_letter_queue_url, self.storage_uri = (
            self.queue.url, self.dead_letter_queue.url, storage_uri)

        # ------------------------------------------------------------ IAM: one role per Deployment, KEDA's grant
        arns = pulumi.Output.all(self.queue.arn, self.dead_letter_queue.arn, self.bucket.arn)
        self.gateway_role = irsa_role(
            f"{name}-gateway", oidc_provider_arn=cloud.oidc_provider_arn, oidc_provider_url=cloud.oidc_provider_url,
            namespace=namespace, service_account=f"{spec.name}-gateway", parent=self,
            policy=arns.apply(lambda a: gateway_policy(*a)))
        self.worker_role = irsa_role(
            f"{name}-worker", oidc_provider_arn=cloud.oidc_provider_arn, oidc_provider_url=cloud.oidc_provider_url,
            namespace=namespace, service_account=f"{spec.name}-worker", parent=self,
            policy=arns.apply(lambda a: worker_policy(*a)))
        self.keda_grant = aws.iam.RolePolicy(
            f"{name}-keda-queue", role=cloud.keda_role.id,
            policy=self.queue.arn.apply(lambda arn: json.dumps(keda_policy(arn))), opts=aws_opts)

        store_env = {
            c.ASYNC_STORE_ENV: c.ASYNC_STORE_SQS,
            c.ASYNC_QUEUE_URL_ENV: self.queue.url,
            c.ASYNC_DEAD_LETTER_QUEUE_URL_ENV: self.dead_letter_queue.url,
            c.ASYNC_STORAGE_URI_ENV: storage_uri,
            "AWS_REGION": cloud.region,
        }

        # ------------------------------------------------------------ gateway: the API's face
        gateway_spec = spec.model_copy(update={
            "compute": GATEWAY_COMPUTE,
            "serving": spec.serving.model_copy(update={"processes": 1}),
        })
        gw = Parts(self, name, dataclasses.replace(args, spec=gateway_spec), role=c.ROLE_GATEWAY)
        self.gateway_service_account = self._service_account(gw, f"{name}-gateway-sa", "-gateway", self.gateway_role)
        self.secret = gw.api_keys_secret()
        # KEDA's HPA owns the replica count (self.gateway_scaled_object).
        self.gateway = gw.deployment(
            f"{name}-gateway", None,
            gw.pod_template(self.image.ref, self.gateway_service_account, self.secret,
                            _env(store_env, c.ROLE_GATEWAY), ["--role", c.ROLE_GATEWAY]),
            gw.opts(self.secret, *self.gateway_role.resources, custom_timeouts=gw.rollout_timeouts()),
            max_surge=1, max_unavailable=0,
        )
        self.gateway_scaled_object = k8s.apiextensions.CustomResource(
            f"{name}-gateway-scaledobject",
            api_version="keda.sh/v1alpha1",
            kind="ScaledObject",
            metadata=gw.meta("-gateway"),
            spec={
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": spec.name},
                "minReplicaCount": GATEWAY_MIN_REPLICAS,
                "maxReplicaCount": GATEWAY_MAX_REPLICAS,
                "advanced": {
                    "restoreToOriginalReplicaCount": False,
                    # Not the API's name: the at-max-replicas alert reads an HPA's name as the API's.
                    "horizontalPodAutoscalerConfig": {"name": f"{spec.name}-gateway"},
                },
                "triggers": [{"type": "cpu", "name": "cpu", "metricType": "Utilization",
                              "metadata": {"value": str(GATEWAY_CPU_UTILIZATION)}}],
            },
            opts=gw.opts(self.gateway),
        )
        self.service = gw.service()
        # maxUnavailable 1 of at least two: one gateway always serves.
        self.gateway_pdb = gw.pdb()
        self.gateway_network_policy = gw.network_policy(extra_egress=[https_egress()])
        # Prefix: `<endpoint>` (submit) and `<endpoint>/<id>` (status).
        self.ingress = gw.ingress(self.service, self.gateway, path_type="Prefix")

        # ------------------------------------------------------------ workers: scaled on the queue
        wk = Parts(self, f"{name}-worker", args, role=c.ROLE_WORKER, object_suffix=ASYNC_WORKER_SUFFIX)
        self.worker_service_account = self._service_account(wk, f"{name}-worker-sa", "", self.worker_role)
        # KEDA's HPA owns the replica count (and KEDA itself the step to and from zero).
        self.worker = wk.deployment(
            f"{name}-worker", None,
            wk.pod_template(self.image.ref, self.worker_service_account, None,
                            _env(store_env, c.ROLE_WORKER), ["--role", c.ROLE_WORKER]),
            wk.opts(*self.worker_role.resources, custom_timeouts=wk.rollout_timeouts()),
        )
        self.worker_pdb = wk.pdb()
        # In: Prometheus only (no load balancer reaches a worker). Out: DNS and HTTPS (SQS, S3, STS).
        self.worker_network_policy = wk.network_policy(load_balancer=False, extra_egress=[https_egress()])
        self.trigger_auth = k8s.apiextensions.CustomResource(
            f"{name}-queue-auth",
            api_version="keda.sh/v1alpha1",
            kind="TriggerAuthentication",
            metadata=wk.meta("-queue"),
            # The operator's own credentials (its IRSA role), not the workload's: `identityOwner` unset = keda.
            spec={"podIdentity": {"provider": "aws"}},
            opts=wk.opts(),
        )
        a = spec.autoscaling
        self.scaled_object = k8s.apiextensions.CustomResource(
            f"{name}-worker-scaledobject",
            api_version="keda.sh/v1alpha1",
            kind="ScaledObject",
            metadata=wk.meta(),
            spec={
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"{spec.name}-worker"},
                "pollingInterval": max(1, int(a.polling_interval.seconds)),
                "cooldownPeriod": int(a.cooldown_period.seconds),
                "minReplicaCount": a.min_replicas,
                "maxReplicaCount": a.max_replicas,
                "advanced": {"restoreToOriginalReplicaCount": False},
                "triggers": [{
                    "type": "aws-sqs-queue",
                    "name": "queue",
                    "authenticationRef": {"name": f"{spec.name}-worker-queue", "kind": "TriggerAuthentication"},
                    "metadata": {
                        "queueURL": self.queue.url,
                        "awsRegion": cloud.region,
                        # Jobs per worker replica, queued or running (scaleOnInFlight counts received messages).
                        "queueLength": number(spec.target_queue_depth),
                        "activationQueueLength": "0",
                        "scaleOnInFlight": "true",
                    },
                }],
            },
            # The grant first: a scaler that cannot read the queue gets no metric.
            opts=wk.opts(self.worker, self.trigger_auth, self.keda_grant),
        )
        self.url = gw.url(self.ingress)
        self.register_outputs({"url": self.url, "queue_url": self.queue.url, "storage_uri": storage_uri})

    @staticmethod
    def _service_account(parts: Parts, resource_name: str, suffix: str, role) -> k8s.core.v1.ServiceAccount:
        # IRSA: EKS's pod identity webhook gives pods of this account AWS_ROLE_ARN and a projected web identity
        # token of their own (the Kubernetes API token stays unmounted).
        return k8s.core.v1.ServiceAccount(
            resource_name, metadata=parts.meta(suffix, annotations={IRSA_ROLE_ANNOTATION: role.arn}),
            automount_service_account_token=False, opts=parts.opts(*role.resources))


def _env(store_env: dict[str, pulumi.Input[str]], role: str) -> dict[str, pulumi.Input[str]]:
    return {c.ROLE_ENV: role, **store_env}
