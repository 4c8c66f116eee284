"""An API's model files in the cluster (`predictor.model_uri`, issue 14): the version `pulumi up` records, the
pod's cache volume, and the S3 scope of the API's own IAM role.

- Resolved at program run time, before any resource is registered (`resolve_models`): the objects now at each
  `s3://` URI, listed with the deployer's own credentials through `myelin.model_files` (the one module that
  knows boto3), give the model's version; it goes into the pod template as `MYELIN_MODEL_VERSION`, so a new
  model at the same URI changes the template: `pulumi preview` shows the diff, `pulumi up` rolls the pods.
  A model that cannot be listed stops the program (preview and up alike), naming the API, the URI and why:
  a preview that could not see the model could not show whether it changed.
- The cache lives on the pod's own emptyDir (`cache_volume_bytes`): a generic ephemeral volume would be an EBS
  volume per pod (an EBS CSI driver the cluster does not run, an attach on every start, an AZ-bound volume,
  the per-instance attachment limit) for a cache that is refilled from S3 anyway; an emptyDir lives on the
  node's disk, is sized by `compute.model_disk` (sizeLimit, and an ephemeral-storage request so the scheduler
  picks a node with room), survives container restarts within the pod, and keeps the restricted profile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from myelin.spec import ModelUri, S3Scope, SpecError, parse_model_uri, s3_scope

from ..config import DeployedApi

#: Where the model volume is mounted (`MYELIN_MODEL_CACHE`); the root file system stays read-only.
MODEL_CACHE_DIR = "/var/cache/myelin/models"
MODEL_VOLUME = "model-cache"
#: The name of the inline policy of an API's role: the policy pack finds an API's S3 grants by it.
MODEL_POLICY_PREFIX = "myelin-model-"
#: The cache's bound stays this far under the volume (at most): manifests, lock files, a download's last buffers.
_HEADROOM_MAX = 64 * 2**20


def partition_of(region: str) -> str:
    """The AWS partition of a region (for ARNs): aws-cn in China, aws-us-gov in GovCloud, else aws."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def cache_max_bytes(volume_bytes: int) -> int:
    """`MYELIN_MODEL_CACHE_MAX_BYTES` for a volume of this size: a bit under it (5%, at most 64 MiB), so the
    cache's own eviction acts before the kubelet evicts the pod for exceeding the volume's sizeLimit."""
    return volume_bytes - min(volume_bytes // 20, _HEADROOM_MAX)


@dataclass(frozen=True)
class ResolvedModel:
    """An API's `s3://` model as it is at S3 when the program runs."""

    uri: ModelUri
    #: `myelin.model_files.resolve_model_version(uri)`: the name of the runtime's cache entry for these files.
    version: str
    total_bytes: int
    #: compute.model_disk in bytes: the emptyDir's sizeLimit and the pod's ephemeral-storage request.
    volume_bytes: int
    volume_size: str
    #: The customer-managed KMS key its objects are encrypted with (myelin:apis.<folder>.model_kms_key_arn).
    kms_key_arn: str | None = None

    @property
    def cache_max_bytes(self) -> int:
        return cache_max_bytes(self.volume_bytes)

    def scope(self, partition: str = "aws") -> S3Scope:
        scope = s3_scope(self.uri, partition)
        assert scope is not None
        return scope

    def policy_document(self, partition: str = "aws") -> dict:
        """The API role's policy: read the model (`S3Scope.policy_document`) and, for a model under a customer-managed
        key, decrypt with that key only as S3 does for the model's own objects."""
        scope = self.scope(partition)
        document = scope.policy_document()
        if self.kms_key_arn is not None:
            document = {**document, "Statement": [*document["Statement"], kms_statement(self.kms_key_arn, scope)]}
        return document


def kms_statement(key_arn: str, scope: S3Scope) -> dict:
    """kms:Decrypt on one key, only through S3 in the key's region (an SSE-KMS key lives in its bucket's region) and
    only for the model's objects: S3 passes the object's ARN as the encryption context `aws:s3:arn`, or the
    bucket's ARN when the bucket uses an S3 Bucket Key (Amazon S3 User Guide, "Using server-side encryption with
    AWS KMS keys (SSE-KMS)", Encryption context)."""
    region = key_arn.split(":")[3]
    return {
        "Sid": "DecryptModel",
        "Effect": "Allow",
        "Action": ["kms:Decrypt"],
        "Resource": [key_arn],
        "Condition": {
            "StringEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"},
            "StringLike": {"kms:EncryptionContext:aws:s3:arn": [scope.bucket_arn, *scope.object_arns]},
        },
    }


def resolve_models(apis: Iterable[DeployedApi], stack: str, preview: bool, client: object = None) -> dict[str, ResolvedModel]:
    """API name -> its resolved model, for every API with an `s3://` model_uri (others have none).

    Raises SpecError naming the api.yaml, the field, the URI and the reason when a model cannot be listed
    (no credentials, access denied, not found, cannot reach S3) or does not fit in `compute.model_disk`.
    """
    from myelin.model_files import ModelFetchError, list_model, s3_client

    out: dict[str, ResolvedModel] = {}
    command = "pulumi preview" if preview else "pulumi up"
    for api in apis:
        spec = api.spec
        uri_text = spec.predictor.model_uri
        if uri_text is None:
            continue
        uri = parse_model_uri(uri_text)
        if not uri.is_s3:
            continue
        source = f"{api.folder / 'api.yaml'} (stack {stack})"
        try:
            client = client if client is not None else s3_client()
            listing = list_model(uri, client)
        except ModelFetchError as err:
            raise SpecError(source, [("predictor.model_uri", (
                f"API {spec.name}: {command} records the version of the model at {uri.raw} and could not list it: "
                f"{err.reason}" + (f" ({err.detail})" if err.detail else "") + ". The identity running pulumi "
                "(your AWS credentials, or the CI's deploy and preview roles) needs s3:ListBucket on the prefix and "
                "s3:GetObject on the objects (and s3:GetObjectVersion with ?versionId=): docs/models-from-s3.md"))]) from None
        except Exception as err:  # noqa: BLE001 - a bad AWS config file, say: still name the API and the URI
            raise SpecError(source, [("predictor.model_uri", (
                f"API {spec.name}: {command} could not list the model at {uri.raw}: {type(err).__name__}: {err}"))]) from None
        volume = spec.compute.model_disk_bytes
        assert volume is not None and spec.compute.model_disk is not None  # config.resolve_apis refuses it missing
        model = ResolvedModel(uri=uri, version=listing.version, total_bytes=listing.total_bytes,
                              volume_bytes=volume, volume_size=spec.compute.model_disk,
                              kms_key_arn=getattr(api, "model_kms_key_arn", None))
        if model.total_bytes > model.cache_max_bytes:
            raise SpecError(source, [("compute.model_disk", (
                f"API {spec.name}: the model at {uri.raw} is {model.total_bytes} bytes, but compute.model_disk "
                f"{spec.compute.model_disk} leaves {model.cache_max_bytes} bytes for the model cache: the pod could "
                f"never download it. Make compute.model_disk at least {_size_hint(model.total_bytes)}"))])
        out[spec.name] = model
    return out


def _size_hint(total_bytes: int) -> str:
    """The smallest whole Mi (Gi from 1 GiB up) whose cache bound holds `total_bytes`."""
    mib = max(1, -(-total_bytes * 20 // 19) // 2**20)
    while cache_max_bytes(mib * 2**20) < total_bytes:
        mib += 1
    if mib < 1024:
        return f"{mib}Mi"
    gib = -(-mib // 1024)
    return f"{gib}Gi"
