"""The predictor image: `predictor_image/Dockerfile` + the `myelin` package + one API folder.

Build context: `predictor_image/` (the runtime package and the Dockerfile), plus a named build
context `api` pointing at the API folder (`COPY --from=api`). By hand:

    docker buildx build -f predictor_image/Dockerfile --build-context api=apis/iris-classifier \
        --build-arg BASE_IMAGE=python:3.11-slim-bookworm predictor_image

The tag is a content hash of every file that goes into the image plus the build args, so any change
to the runtime, the Dockerfile or the API folder gives a new tag and rolls the pods (ECR tags are immutable).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from pathlib import Path
from typing import Mapping

import pulumi
import pulumi_aws as aws
import pulumi_docker_build as docker_build

from .config import REPO_ROOT

PREDICTOR_IMAGE_DIR = REPO_ROOT / "predictor_image"
DOCKERFILE = PREDICTOR_IMAGE_DIR / "Dockerfile"
_ALWAYS_IGNORED = ("__pycache__", "*.pyc", "*.pyo", ".pytest_cache", ".mypy_cache", ".git", ".DS_Store")


def _ignore_patterns(folder: Path) -> list[str]:
    patterns = list(_ALWAYS_IGNORED)
    ignore_file = folder / ".dockerignore"
    if ignore_file.is_file():
        for line in ignore_file.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and not line.startswith("!"):
                patterns.append(line.rstrip("/").lstrip("/"))
    return patterns


def _ignored(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    for pattern in patterns:
        pattern = pattern.removeprefix("**/")
        if fnmatch.fnmatch(rel, pattern) or any(fnmatch.fnmatch(p, pattern) for p in parts):
            return True
    return False


def hash_tree(folder: Path, digest: "hashlib._Hash", label: str) -> None:
    patterns = _ignore_patterns(folder)
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for fname in sorted(files):
            path = Path(root) / fname
            rel = path.relative_to(folder).as_posix()
            if _ignored(rel, patterns) or not path.is_file():
                continue
            digest.update(f"{label}/{rel}\0".encode())
            with path.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
            digest.update(b"\0")


def content_tag(api_folder: Path, build_args: Mapping[str, str]) -> str:
    """Deterministic tag from the runtime sources, the Dockerfile, the API folder and the build args."""
    digest = hashlib.sha256()
    hash_tree(PREDICTOR_IMAGE_DIR, digest, "predictor_image")
    hash_tree(api_folder, digest, "api")
    for key in sorted(build_args):
        digest.update(f"arg:{key}={build_args[key]}\0".encode())
    return digest.hexdigest()[:20]


def _rel(path: Path) -> str:
    # Relative paths keep `pulumi preview` diffs identical on laptops and CI runners.
    return os.path.relpath(path, REPO_ROOT)


class PredictorImage(pulumi.ComponentResource):
    """An ECR repository (scan on push, immutable tags) and the image built and pushed into it."""

    ref: pulumi.Output[str]
    tag: str

    def __init__(self, name: str, api_folder: Path, base_image: str, force_delete: bool,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("myelin:infra:PredictorImage", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        build_args = {"BASE_IMAGE": base_image}
        self.tag = content_tag(api_folder, build_args)
        repo = aws.ecr.Repository(
            name,
            image_tag_mutability="IMMUTABLE",
            image_scanning_configuration=aws.ecr.RepositoryImageScanningConfigurationArgs(scan_on_push=True),
            encryption_configurations=[aws.ecr.RepositoryEncryptionConfigurationArgs(encryption_type="AES256")],
            force_delete=force_delete,
            opts=child,
        )
        aws.ecr.LifecyclePolicy(
            name,
            repository=repo.name,
            policy=(
                '{"rules":[{"rulePriority":1,"description":"keep the last 20 images",'
                '"selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":20},'
                '"action":{"type":"expire"}}]}'
            ),
            opts=child,
        )
        auth = aws.ecr.get_authorization_token_output(registry_id=repo.registry_id,
                                                      opts=pulumi.InvokeOutputOptions(parent=self))
        image_name = repo.repository_url.apply(lambda url: f"{url}:{self.tag}")
        image = docker_build.Image(
            name,
            tags=[image_name],
            context=docker_build.BuildContextArgs(
                location=_rel(PREDICTOR_IMAGE_DIR),
                named={"api": docker_build.ContextArgs(location=_rel(api_folder))},
            ),
            dockerfile=docker_build.DockerfileArgs(location=_rel(DOCKERFILE)),
            build_args=build_args,
            platforms=[docker_build.Platform.LINUX_AMD64],
            push=True,
            # Previews (every PR) do not build: a GPU image takes minutes; `pulumi up` builds and pushes.
            build_on_preview=False,
            registries=[
                docker_build.RegistryArgs(address=repo.repository_url, username=auth.user_name, password=auth.password)
            ],
            opts=child,
        )
        # Pin the pods to the pushed digest; the content tag stays readable in the registry.
        self.ref = pulumi.Output.all(image_name, image.digest).apply(
            lambda a: f"{a[0]}@{a[1]}" if a[1] else a[0]
        )
        self.register_outputs({"ref": self.ref})
