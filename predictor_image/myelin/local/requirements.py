"""Is an API's `requirements.txt` satisfied by this Python? Which packages are missing, and the command to fix it."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from ..loader import pip_install_command


@dataclass(frozen=True)
class Unmet:
    requirement: str  # as written
    installed: str | None  # the installed version, None when missing

    def __str__(self) -> str:
        return f"{self.requirement} (installed: {self.installed})" if self.installed else self.requirement


def unmet(folder: Path) -> list[Unmet]:
    """The requirements of the API folder this interpreter does not satisfy (an absent file requires nothing)."""
    path = Path(folder) / "requirements.txt"
    if not path.is_file():
        return []
    missing = []
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue  # comments and pip options (-r, --index-url, -e ...)
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue  # pip reports these itself; not ours to judge here
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            missing.append(Unmet(line, None))
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            missing.append(Unmet(line, version))
    return missing


def install_command(folder: Path) -> str:
    """The exact command that installs the API's requirements into this interpreter."""
    return pip_install_command(folder)


def message(folder: Path, missing: list[Unmet]) -> str:
    """Which packages are missing and the one command that installs them. Not `make local`: this is said while
    `myelin local` (perhaps started by `make local`) is running, and it starts the API by itself once they are in."""
    names = ", ".join(str(m) for m in missing)
    return f"needs packages this Python does not have: {names}; install them with `{install_command(folder)}`"
