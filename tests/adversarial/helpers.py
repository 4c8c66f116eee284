"""Helpers of the adversarial suite; servers, RSS readings and raw sockets come from tests/reliability/helpers.py."""

from __future__ import annotations

import re
from pathlib import Path

APIS = Path(__file__).resolve().parent / "apis"


def metric(text: str, name: str, api: str) -> float:
    """One API's sample of `name` in a /metrics exposition."""
    match = re.search(rf'^{name}{{api="{api}"}} (\S+)$', text, re.M)
    assert match, f"{name} for {api} not in /metrics"
    return float(match.group(1))
