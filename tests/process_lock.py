"""A lock shared by every process of the test run (pytest-xdist runs the suite in several worker processes).

Some work must not run twice at once: apt-get (one dpkg lock per machine), `npm ci` into one node_modules, and the
Pulumi program, which stages each image's build context under the repository's `.myelin/build/` (a second run of
the same stack would delete the folder the first is copying into). `flock` is released when its file is closed,
also when the process dies.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def repo_lock_path(name: str) -> Path:
    """A lock file for work on this checkout's files (git-ignored `.myelin/`)."""
    return ROOT / ".myelin" / "test-locks" / f"{name}.lock"


def machine_lock_path(name: str) -> Path:
    """A lock file for work on the machine itself (whatever checkout runs the tests)."""
    return Path(tempfile.gettempdir()) / f"myelin-tests-{name}.lock"


@contextmanager
def file_lock(path: Path):
    """Hold an exclusive flock on `path` (created if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
