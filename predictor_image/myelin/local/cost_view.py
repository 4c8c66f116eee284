"""`myelin local`'s view of what a prediction costs: each API process measures its own CPU per prediction and
its estimate (myelin.cost, in its `/info`); the router copies that section into its `/info` and the page shows
"≈ $X per 1M predictions on <instance type>" with the assumptions behind it."""

from __future__ import annotations

import asyncio
import contextlib
import html
from typing import Any

import httpx

from .. import contract
from ..cost import money
from .child import ChildState

#: A busy API process must not hold up the router's /info or page: its cost is left out this time.
INFO_TIMEOUT_S = 0.5


async def _child_cost(api: Any) -> dict[str, Any] | None:
    child = api.serving
    if child is None or child.client is None or child.state is not ChildState.READY:
        return None
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
        info = (await child.client.get(contract.INFO_PATH, timeout=INFO_TIMEOUT_S)).json()
        for described in info.get("apis", []):
            if described.get("name") == api.name:
                return described.get("cost")
    return None


async def attach_costs(listed: list[dict[str, Any]], server: Any) -> list[dict[str, Any]]:
    """Add each served API's `cost` section (from its own process) to the router's list of APIs."""
    apis = {a.name: a for a in server.apis.values()}
    served = [(info, apis[info["name"]]) for info in listed if info.get("name") in apis]
    costs = await asyncio.gather(*(_child_cost(api) for _, api in served))
    for (info, _), cost in zip(served, costs):
        if cost is not None:
            info["cost"] = cost
    return listed


def cost_html(cost: dict[str, Any] | None) -> str:
    """The cost line of an API's card: the estimate and its assumptions, or what is measured so far."""
    if not cost or not cost.get("measured"):
        return ""
    per = cost.get("cpu_seconds_per_prediction")
    if per is None:
        return '<p class="meta cost">Cost: send predictions to measure CPU seconds per prediction.</p>'
    count = cost["predictions"]
    measured = f"{per * 1000:.3g} ms CPU per prediction over {count} prediction{'' if count == 1 else 's'}"
    est = cost.get("estimate")
    if est is None:
        hint = html.escape(cost["error"]) if cost.get("error") else "start with --stack dev (or prod) for dollars"
        return f'<p class="meta cost">{measured} · {hint}</p>'
    r = est["replica"]
    assumptions = "".join(f"<li>{html.escape(a)}</li>" for a in est["assumptions"])
    return (f'<p class="cost"><strong>{html.escape(est["text"])}</strong></p>'
            f'<p class="meta cost">{measured}; one replica ({r["cpu"]:g} CPU, {r["memory_gib"]:.3g} GiB'
            f'{", %d GPU" % r["gpus"] if r["gpus"] else ""}) costs {money(r["hourly_dollars"]["total"])}/hour on '
            f'{html.escape(est["instance_type"])} in {html.escape(est["region"])} and serves '
            f'{r["predictions_per_second"]:.3g} predictions/s at its CPU request. Prices as of '
            f'{html.escape(est["prices"]["as_of"])}.</p>'
            f'<details class="meta cost"><summary>Assumptions</summary><ul>{assumptions}</ul></details>')
