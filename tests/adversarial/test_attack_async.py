"""Attacks on AsyncAPI's job store bound: small submits whose results are large.

jobs.max_stored_bytes bounds what the store holds for an API, results included, but only submits were checked:
tiny payloads whose predictor answers with megabytes filled the store past the bound without limit (with
`max_stored_bytes: 20Mi`, two 30 MB results: 60 MB held), and every status read of such a result builds it in
memory again (20 concurrent reads of one 30 MB result: gateway RSS 172 MiB -> 1,461 MiB peak). Now a result that
does not fit beside what the store holds fails its job with `result_too_large` and is not stored. A real
`myelin serve` on 127.0.0.1, stopped by pid."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx

LIMIT = 4 * 2**20
PREDICTOR = """
class Predictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        return b"x" * int(payload["size"])
"""


def _wait_done(base: str, job: str) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        doc = httpx.get(f"{base}/sizer/{job}", timeout=10).json()
        if doc["status"] in ("completed", "failed"):
            return doc
        time.sleep(0.05)
    raise AssertionError(f"job {job} not finished: {doc}")


def _stored(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return float(re.search(r'^myelin_async_stored_bytes\{api="sizer"\} (\S+)$', text, re.M).group(1))


def test_results_count_against_max_stored_bytes(tmp_path, start_server):
    folder = tmp_path / "sizer"
    folder.mkdir()
    (folder / "api.yaml").write_text("kind: AsyncAPI\nname: sizer\njobs:\n  max_stored_bytes: 4Mi\n"
                                     "serving:\n  max_body_size: 1Mi\n  timeout: 20s\n")
    (folder / "predictor.py").write_text(PREDICTOR)
    server = start_server("serve", str(folder), env={"MYELIN_STATE_DIR": str(tmp_path / "state")})
    outcomes = []
    for size in (3 * 2**20, 3 * 2**20, 5 * 2**20, 100):
        r = httpx.post(f"{server.base}/sizer", json={"size": size}, timeout=10)
        assert r.status_code == 202, r.text
        doc = _wait_done(server.base, r.json()["id"])
        outcomes.append(doc["status"] if doc["status"] == "completed" else doc["error"]["type"])
    # 3 MiB fits; a second 3 MiB does not fit beside it; 5 MiB never fits; 100 bytes still do.
    assert outcomes == ["completed", "result_too_large", "result_too_large", "completed"], outcomes
    database = Path(tmp_path / "state" / "sizer.sqlite3")
    deadline = time.monotonic() + 10
    while _stored(server.base) == 0 and time.monotonic() < deadline:
        time.sleep(0.2)  # the gauge is sampled every 2 s
    stored = _stored(server.base)
    print(f"results of 3, 3, 5 MiB and 100 B under max_stored_bytes 4 MiB: {outcomes}; stored {stored:.0f} B, "
          f"database file {database.stat().st_size if database.exists() else '?'} B")
    assert 0 < stored <= LIMIT
    failed = [e for e in server.log_lines() if e.get("message") == "result too large for the job store"]
    assert len(failed) == 2
