"""The shell commands of the documentation (README.md, docs/**/*.md, benchmarks/README.md), as written.

Every command line in a ```bash / ```sh block is either run by a test exactly as written (only the host and port
of `http://127.0.0.1:8888` are replaced by the test server's), or listed in NOT_RUN_HERE with the reason it
cannot run on a test machine. tests/docs/test_docs_commands.py fails on a command that is neither, so a command
added to the docs is either tested or says why not. ```console blocks are transcripts (a session with its
output), not commands to copy: they are left out.

Which test runs what:
- the `curl` lines against `myelin local` (each example API, the AsyncAPI's submit-and-poll pair):
  tests/runtime/test_examples_served.py (`test_docs_curl_lines_work_as_written`,
  `test_docs_submit_and_poll_work_as_written`), on the server its `local` fixture starts with `myelin local apis`;
- the other runnable commands (RUN_HERE): tests/docs/test_docs_commands.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHELL_BLOCKS = ("bash", "sh", "shell")
LOCAL = "http://127.0.0.1:8888"


@dataclass(frozen=True)
class Command:
    file: Path
    line: int
    text: str

    @property
    def command(self) -> str:
        """The line without its trailing comment."""
        return re.sub(r"\s+#\s.*$", "", self.text)

    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), ROOT / "benchmarks" / "README.md"]


def commands(files: list[Path] | None = None) -> list[Command]:
    """Every non-empty, non-comment line of every shell block, in order."""
    out = []
    for file in files or doc_files():
        lang = None
        for number, line in enumerate(file.read_text().splitlines(), 1):
            fence = line.lstrip()
            if fence.startswith("```"):
                lang = None if lang is not None else (fence[3:].strip() or "text")
                continue
            if lang in SHELL_BLOCKS and line.strip() and not line.strip().startswith("#"):
                out.append(Command(file, number, line.strip()))
    return out


# -- what a test runs, by kind ------------------------------------------------------------------------------------

def is_local_curl(text: str) -> bool:
    """A call of an API served by `myelin local` (tests/runtime/test_examples_served.py runs these)."""
    return bool(re.match(r"(ID=\$\()?curl (-N )?-s " + re.escape(LOCAL) + "/", text))


#: Commands that run here, quickly, with what each must print (tests/docs/test_docs_commands.py runs them).
RUN_HERE = {
    "python3 benchmarks/run.py --list": "myelin-",
}

#: Command prefix -> why no test runs it. Anything not listed here, in RUN_HERE or a local curl line fails the test.
NOT_RUN_HERE = {
    "make local": "serves until Ctrl-C; tests/runtime/test_examples_served.py starts what it runs after installing, "
                  "`myelin local apis`, and calls every API through it",
    "make test": "the test suite itself (.ci/run runs it)",
    "python3.11 -m venv .venv && .venv/bin/pip install": "installs the requirements: what every test run has done "
                                                         "first (the Makefile's .deps step)",
    "pulumi ": "needs an AWS account and a Pulumi backend; tests/infra/ runs the program under Pulumi's mocks",
    "URL=$(pulumi ": "reads a deployed stack's outputs",
    "KEY=$(pulumi ": "reads a deployed stack's outputs",
    "export EMBED_URL=$(pulumi ": "reads a deployed stack's outputs (the Python snippet after it is run against "
                                 "myelin local by tests/protocols/test_readme.py, in its quick-start form)",
    "export KMEANS_URL=$(pulumi ": "reads a deployed stack's outputs",
    'curl -s -X POST "$URL"': "calls a deployed stack's load balancer",
    "curl -s https://checkip.amazonaws.com": "the internet: test machines reach package registries only",
    "kubectl ": "needs a deployed cluster",
    "aws ": "needs an AWS account",
    "python3 benchmarks/run.py": "a benchmark run: minutes of load on every core",
    "python3 benchmarks/ab.py": "a benchmark run: two revisions under load for minutes (tests/benchmarks/test_ab.py "
                                "checks the harness)",
    "python3 benchmarks/breakdown.py": "a profile run under load for minutes",
    ".venv/bin/python benchmarks/model_download.py": "a benchmark run: uploads and downloads up to 1 GiB, minutes",
    "python3 benchmarks/streaming.py": "a benchmark run: minutes of load",
    "python3 benchmarks/async_jobs.py": "a benchmark run: minutes of load",
    "python3 benchmarks/scale_to_zero.py": "a benchmark run: repeated cold starts under `myelin local`, a minute",
    "python3 benchmarks/processes.py": "a benchmark run: minutes of load on both cores",
}


def why_not_run(text: str) -> str | None:
    for prefix, reason in NOT_RUN_HERE.items():
        if text.startswith(prefix):
            return reason
    return None


def local_url(text: str, base: str) -> str:
    """The command as written, pointed at the test's server instead of port 8888."""
    return text.replace(LOCAL, base)
