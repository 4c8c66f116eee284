from __future__ import annotations

import pytest

from .harness import StackRun, run_program, user_config

STACKS = ("dev", "prod")


@pytest.fixture(scope="session")
def stack_runs() -> dict[str, StackRun]:
    return {stack: run_program(stack, user_config(stack)) for stack in STACKS}


@pytest.fixture(scope="session", params=STACKS)
def run(request, stack_runs) -> StackRun:
    return stack_runs[request.param]


@pytest.fixture(scope="session")
def dev(stack_runs) -> StackRun:
    return stack_runs["dev"]


@pytest.fixture(scope="session")
def prod(stack_runs) -> StackRun:
    return stack_runs["prod"]
