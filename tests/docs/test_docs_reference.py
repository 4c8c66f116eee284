"""The api.yaml and stack configuration references are generated from the pydantic models (scripts/gen_reference.py):
the committed pages are what the models say, and every field says what it is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import gen_reference  # noqa: E402


def test_the_committed_reference_pages_are_what_the_models_say():
    stale = gen_reference.stale_pages()
    assert not stale, f"{[str(p.relative_to(ROOT)) for p in stale]} differ from the models: run " \
                      ".venv/bin/python scripts/gen_reference.py and commit the pages"


def test_the_check_command_fails_on_a_stale_page(tmp_path, monkeypatch):
    page = tmp_path / "api-yaml.md"
    page.write_text(gen_reference.api_yaml_page().replace("`60s`", "`61s`", 1))
    monkeypatch.setattr(gen_reference, "PAGES", {page: gen_reference.api_yaml_page})
    assert gen_reference.main(["--check"]) == 1
    page.write_text(gen_reference.api_yaml_page())
    assert gen_reference.main(["--check"]) == 0


def test_the_script_runs_as_documented():
    out = subprocess.run([sys.executable, "scripts/gen_reference.py", "--check"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("kind", sorted(gen_reference.KINDS))
def test_every_api_yaml_field_has_a_description(kind):
    assert gen_reference.missing_descriptions(gen_reference.KINDS[kind]) == []


def test_every_stack_config_field_has_a_description():
    from components.config import StackConfig

    assert gen_reference.missing_descriptions(StackConfig) == []


def test_a_field_without_a_description_is_found():
    from pydantic import BaseModel, Field

    class Section(BaseModel):
        """A section."""

        told: int = Field(1, description="Says what it is.")
        untold: int = 2

    class Spec(BaseModel):
        name: str = Field(..., description="A name.")
        section: Section = Field(default_factory=Section)
        bare: str = "x"

    assert gen_reference.missing_descriptions(Spec) == ["section.untold", "bare"]


def test_every_field_of_every_kind_is_in_the_page():
    """Each model field is a row (`predictor.model_uri`, `jobs.max_queued`, `apis[].weight`, ...)."""
    page = (ROOT / "docs" / "reference" / "api-yaml.md").read_text()
    for kind, model in gen_reference.KINDS.items():
        section = page[page.index(f"## {kind}"):]
        for path, *_ in gen_reference.rows(model):
            assert f"| {path} |" in section, (kind, path)
    assert "| `serving.timeout` | duration | `60s` |" in page
    assert "| `autoscaling.min_replicas` | integer (≥ 0, ≤ 1000) | `0` |" in page  # an AsyncAPI's floor
