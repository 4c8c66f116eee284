"""MkDocs hooks (mkdocs.yml `hooks:`): pages of the site that live outside docs/.

benchmarks/README.md stays where the benchmark scripts rewrite its tables (benchmarks/async_jobs.py,
benchmarks/streaming.py) and where it sits beside its results; the site serves it as the Benchmarks page, with
the picture it links to, so there is one copy of it.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent

#: site path -> file in the repository
OUTSIDE_DOCS = {
    "benchmarks/README.md": ROOT / "benchmarks" / "README.md",
    "benchmarks/results/benchmark.png": ROOT / "benchmarks" / "results" / "benchmark.png",
}


def on_files(files, config):
    for src_uri, path in OUTSIDE_DOCS.items():
        files.append(File.generated(config, src_uri, abs_src_path=str(path)))
    return files
