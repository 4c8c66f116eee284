"""The predictor image: `predictor_image/Dockerfile` + the `myelin` package + one API folder.

What goes into the image is what git tracks: the runtime sources (`predictor_image/`) and the API folder are
staged, their git-tracked files only, under `.myelin/build/<image>/` (git-ignored), and the build uses those
staged copies as its contexts. A file git ignores or does not know (a model trained on a laptop, a virtualenv,
caches, a file left with mode 0600) never enters the image, so the same commit gives the same build context and
the same tag on a laptop and in CI. Outside a git checkout, every file is staged except the usual caches and
what a `.dockerignore` in the folder lists. File modes are normalised (0644, 0755 for executables) so they do
not depend on a machine's umask.

Symlinks (git tracks a link, not what it points to): one that resolves inside the repository (the git checkout
holding the folder; outside a checkout, the folder itself) is staged as its target's content, a link to a
directory as that directory's files (those git tracks there) under the link's path. One that resolves outside
the repository, or to nothing, is refused, naming the file (`ImageContextError`, raised by the stack-config check
before any resource exists): a link committed to, say, a credentials file on the build machine never enters an
image.

The tag is a content hash of the staged files (paths and bytes) plus the build args, so any change to the
runtime, the Dockerfile or the API folder gives a new tag and rolls the pods (ECR tags are immutable). By hand:

    docker buildx build -f predictor_image/Dockerfile --build-context api=.myelin/build/<image>/api \
        --build-arg BASE_IMAGE=python:3.11-slim-bookworm .myelin/build/<image>/runtime
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Mapping

import pulumi
import pulumi_aws as aws
import pulumi_docker_build as docker_build

from .config import REPO_ROOT

PREDICTOR_IMAGE_DIR = REPO_ROOT / "predictor_image"
DOCKERFILE = PREDICTOR_IMAGE_DIR / "Dockerfile"
BUILD_DIR = REPO_ROOT / ".myelin" / "build"
_ALWAYS_IGNORED = ("__pycache__", "*.pyc", "*.pyo", ".pytest_cache", ".mypy_cache", ".git", ".DS_Store",
                   ".venv", "node_modules")


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


class ImageContextError(ValueError):
    """A file of an image's context that cannot go into it (a symlink out of the repository, or to nothing)."""

    def __init__(self, path: Path, message: str):
        self.path = path
        super().__init__(f"{path}: {message}")


def _git_tracked(folder: Path) -> list[str] | None:
    """Paths (relative to `folder`) of the files and symlinks git tracks there; None when `folder` is not in a git
    checkout."""
    try:
        out = subprocess.run(["git", "-C", str(folder), "ls-files", "-z", "--cached", "--", "."],
                             capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    files = [p for p in out.stdout.decode().split("\0") if p]
    # Tracked but deleted in the working tree: not part of what would be built.
    return sorted(p for p in files if os.path.lexists(folder / p))


def _repository(folder: Path) -> Path:
    """The root a symlink of `folder` must resolve within: its git checkout, else the folder itself."""
    try:
        out = subprocess.run(["git", "-C", str(folder), "rev-parse", "--show-toplevel"],
                             capture_output=True, check=True, timeout=60)
        return Path(out.stdout.decode().strip()).resolve()
    except (OSError, subprocess.SubprocessError):
        return Path(folder).resolve()


def _entries(folder: Path, patterns: list[str]) -> list[str]:
    """`folder`'s files, symlinks (to files or directories) included, that are not ignored."""
    tracked = _git_tracked(folder)
    if tracked is not None:
        return [p for p in tracked if not _ignored(p, patterns)]
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not _ignored(d, patterns))
        # os.walk does not descend into linked directories: they are entries, expanded by the caller.
        names = list(files) + [d for d in dirs if (Path(root) / d).is_symlink()]
        for fname in names:
            rel = (Path(root) / fname).relative_to(folder).as_posix()
            if not _ignored(rel, patterns):
                found.append(rel)
    return found


def _expand(folder: Path, prefix: str, repository: Path, patterns: list[str], seen: frozenset[Path]) -> list[str]:
    out = []
    for rel in _entries(folder, patterns):
        path = folder / rel
        name = f"{prefix}{rel}"
        if not path.is_symlink():
            if path.is_file():
                out.append(name)
            continue
        target = path.resolve()
        if not target.is_relative_to(repository):
            raise ImageContextError(path, (
                f"a symlink to {target}, outside the repository {repository}: it would copy that file into the image. "
                "Commit the file itself inside the repository, or remove the link"))
        if target.is_file():
            out.append(name)  # staged as its target's content
        elif target.is_dir():
            if target in seen:
                raise ImageContextError(path, f"a symlink to {target}, which contains the link itself (a loop)")
            out.extend(_expand(target, f"{name}/", repository, patterns, seen | {target}))
        else:
            raise ImageContextError(path, f"a symlink to {target}, which does not exist (or is not a file)")
    return out


def context_files(folder: Path) -> list[str]:
    """The files of `folder` that go into the image, as sorted relative paths (a path may go through a symlink
    inside the repository: it is staged as what it points to). Raises ImageContextError for a symlink out of the
    repository or to nothing."""
    folder = Path(folder)
    return sorted(_expand(folder, "", _repository(folder), _ignore_patterns(folder), frozenset({folder.resolve()})))


def hash_tree(folder: Path, digest: "hashlib._Hash", label: str, files: list[str] | None = None) -> None:
    for rel in files if files is not None else context_files(folder):
        digest.update(f"{label}/{rel}\0".encode())
        with (folder / rel).open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")


def content_tag(api_folder: Path, build_args: Mapping[str, str]) -> str:
    """Deterministic tag from the runtime sources, the Dockerfile, the API folder and the build args."""
    digest = hashlib.sha256()
    hash_tree(PREDICTOR_IMAGE_DIR, digest, "predictor_image")
    hash_tree(Path(api_folder), digest, "api")
    if not (Path(api_folder) / "requirements.txt").is_file():
        digest.update(b"api/requirements.txt\0\0")  # staged as an empty file
    for key in sorted(build_args):
        digest.update(f"arg:{key}={build_args[key]}\0".encode())
    return digest.hexdigest()[:20]


def stage(folder: Path, dest: Path, ensure: tuple[str, ...] = ()) -> Path:
    """Copy the image's files of `folder` to `dest` (replaced), modes normalised; `ensure` files exist (empty)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for rel in context_files(folder):
        src, out = folder / rel, dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out)
        os.chmod(out, 0o755 if os.access(src, os.X_OK) else 0o644)
    for rel in ensure:
        (dest / rel).touch()
    return dest


def _rel(path: Path) -> str:
    # Relative paths keep `pulumi preview` diffs identical on laptops and CI runners.
    return os.path.relpath(path, REPO_ROOT)


class PredictorImage(pulumi.ComponentResource):
    """An ECR repository (scan on push, immutable tags) and the image built and pushed into it."""

    ref: pulumi.Output[str]
    tag: str

    def __init__(self, name: str, api_folder: Path, base_image: str, torch_index: str, force_delete: bool,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("myelin:infra:PredictorImage", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        build_args = {"BASE_IMAGE": base_image, "TORCH_INDEX_URL": torch_index}
        self.tag = content_tag(api_folder, build_args)
        staged = BUILD_DIR / name
        runtime_context = stage(PREDICTOR_IMAGE_DIR, staged / "runtime")
        api_context = stage(Path(api_folder), staged / "api", ensure=("requirements.txt",))
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
                location=_rel(runtime_context),
                named={"api": docker_build.ContextArgs(location=_rel(api_context))},
            ),
            dockerfile=docker_build.DockerfileArgs(location=_rel(runtime_context / "Dockerfile")),
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
