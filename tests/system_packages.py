"""System packages some tests need (Debian's `prometheus`, ...), installed by the tests themselves.

A fresh machine passes `make test`: a missing tool is installed with apt (as root, `apt-get update`
first). Where that is impossible the test fails with the command to run, it is never skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading

from process_lock import file_lock, machine_lock_path

_lock = threading.Lock()


def ensure(binary: str, package: str) -> str:
    """The path of `binary`, installing Debian's `package` first when it is missing."""
    # Threads of one process, then the processes of the run (pytest-xdist workers) and other runs on the machine.
    with _lock, file_lock(machine_lock_path("apt")):
        path = shutil.which(binary)
        if path:
            return path
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise RuntimeError(f"{binary} is missing: install it with `sudo apt-get install -y {package}`")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", package], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        path = shutil.which(binary)
        if not path:
            raise RuntimeError(f"apt-get installed {package} but {binary} is still not on PATH")
        return path
