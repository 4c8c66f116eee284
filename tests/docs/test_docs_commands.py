"""Every shell command in the documentation is run by a test as written, or says why it cannot run here
(tests/doc_commands.py has the list and the reasons)."""

from __future__ import annotations

import subprocess

import pytest

from doc_commands import NOT_RUN_HERE, ROOT, RUN_HERE, commands, is_local_curl, why_not_run


def test_every_command_is_run_by_a_test_or_says_why_not():
    unaccounted = [f"{c.where()}: {c.text}" for c in commands()
                   if not (is_local_curl(c.text) or c.command in RUN_HERE or why_not_run(c.text))]
    assert not unaccounted, ("commands in the docs that no test runs: run them in a test (tests/doc_commands.py) "
                             "or list them in NOT_RUN_HERE with the reason\n" + "\n".join(unaccounted))


def test_the_lists_name_only_commands_the_docs_have():
    """A command removed from the docs leaves no stale entry behind."""
    texts = [c.text for c in commands()]
    for prefix in [*NOT_RUN_HERE, *RUN_HERE]:
        assert any(t.startswith(prefix) for t in texts), f"{prefix!r} is in tests/doc_commands.py but in no doc"


def test_the_quick_start_calls_every_example_api():
    """The README and Getting started carry the same curl lines, one per example API."""
    readme = [c for c in commands([ROOT / "README.md"]) if is_local_curl(c.text)]
    started = [c for c in commands([ROOT / "docs" / "getting-started.md"]) if is_local_curl(c.text)]
    assert readme and [c.command for c in readme] == [c.command for c in started]
    # The examples this repository ships (a user's own API under apis/ is not held to this).
    examples = ["hyperparameter-search", "image-classifier", "iris-classifier", "kmeans", "sentence-embedding",
                "text-generator", "wine-classifier"]
    assert all(any(f"8888/{name} " in c.text for c in readme) for name in examples), examples


@pytest.mark.parametrize("command", sorted(RUN_HERE))
def test_runnable_commands_run_as_written(command):
    line = next(c.text for c in commands() if c.command == command)  # as written, its comment included
    out = subprocess.run(["bash", "-c", line], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, (command, out.stdout[-2000:], out.stderr[-2000:])
    assert RUN_HERE[command] in out.stdout, (command, out.stdout[-2000:])
