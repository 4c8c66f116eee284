"""The documentation site builds with `mkdocs build --strict` (no broken link or anchor, no page left out of the
navigation), and the README links to every page of it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent.parent


def _nav_pages(nav) -> list[str]:
    pages = []
    for entry in nav:
        for value in (entry.values() if isinstance(entry, dict) else [entry]):
            pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def _mkdocs_config() -> dict:
    # mkdocs.yml has no custom YAML tags; the plain loader reads it.
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def test_the_site_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    warnings = [line for line in out.stderr.splitlines() if line.startswith("WARNING")]
    assert not warnings, warnings
    for page in _nav_pages(_mkdocs_config()["nav"]):
        html = "index.html" if page == "index.md" else re.sub(r"(README|index)\.md$", "", page).removesuffix(".md") + "/index.html"
        html = html.replace("//", "/")
        assert (tmp_path / "site" / html).is_file(), (page, html)
    # Offline: no page loads a script, font or stylesheet from another host.
    index = (tmp_path / "site" / "index.html").read_text()
    assert not re.search(r'<(script|link)[^>]+(src|href)="https?://', index), "the site fetches from the network"


def test_a_broken_link_fails_the_build(tmp_path):
    """The strict build is what catches a broken link: a copy of the docs with one fails."""
    import shutil

    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    shutil.copytree(ROOT / "benchmarks", tmp_path / "benchmarks", ignore=shutil.ignore_patterns(".work", ".venvs"))
    page = tmp_path / "docs" / "streaming.md"
    page.write_text(page.read_text() + "\nSee [nowhere](no-such-page.md).\n")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode != 0 and "no-such-page.md" in out.stderr, out.stderr[-2000:]


def test_every_page_is_in_the_navigation_and_linked_from_the_readme():
    nav = set(_nav_pages(_mkdocs_config()["nav"]))
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert pages <= nav, f"pages missing from mkdocs.yml's nav: {sorted(pages - nav)}"
    readme = (ROOT / "README.md").read_text()
    links = set(re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme))
    for page in nav - {"index.md"}:
        target = page if page.startswith("benchmarks/") else f"docs/{page}"
        assert target in links, f"README.md does not link to {target}"


def test_the_readme_links_resolve():
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), f"README.md links to {target}, which does not exist"


def test_the_readme_stays_short():
    """A newcomer's README: what Myelin is, the two commands, the curl lines, the pages (issue 24: a screen or two)."""
    assert len((ROOT / "README.md").read_text().splitlines()) <= 100
