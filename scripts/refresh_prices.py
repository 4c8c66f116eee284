"""Refresh the pinned EC2 on-demand price table the local cost estimate reads
(predictor_image/myelin/ec2_prices.py).

    # live: AWS Price List Query API (needs credentials allowed pricing:GetProducts; any region's prices are
    # served from the us-east-1 endpoint)
    python scripts/refresh_prices.py

    # offline: a file of price-list documents saved earlier (the `PriceList` entries of pricing:GetProducts
    # answers, one JSON document each, as a JSON array)
    python scripts/refresh_prices.py --price-list saved.json --as-of 2026-12-06

Which instance types and regions: every `instance_types` / `instance_type` and `aws:region` in the committed
`Pulumi.*.yaml` stacks, plus the Myelin defaults (components/config.py) and any `--instance-type` / `--region`
given. A price is taken only from a product that is Linux, shared tenancy, no pre-installed software, capacity
status "Used" (what an EKS managed node group launches), with exactly one on-demand hourly USD price; anything
ambiguous is an error naming the instance type and region, never a guess.

The written table states its date (`AS_OF`) and where the prices came from (`SOURCE`). The script reads the
price list documents and writes the table; it has no other effect.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import pprint
import sys
from pathlib import Path
from typing import Any, Iterable

import yaml

REPO = Path(__file__).resolve().parent.parent
TABLE = REPO / "predictor_image" / "myelin" / "ec2_prices.py"
#: Instance types Myelin's defaults use (components/config.py: system nodes, CPU pool) in its default region.
DEFAULT_INSTANCE_TYPES = ("t3.medium", "m6i.large", "m5.large")

#: The product attributes that select the price an EKS managed node (Amazon Linux or Bottlerocket) pays.
LINUX_ON_DEMAND = {"operatingSystem": "Linux", "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used"}
PRICING_ENDPOINT_REGION = "us-east-1"


class PriceListError(ValueError):
    """The price list cannot give one unambiguous price: names the instance type and region."""


def stack_targets(repo: Path = REPO) -> tuple[set[str], set[str]]:
    """Instance types and regions of every committed stack file."""
    types, regions = set(DEFAULT_INSTANCE_TYPES), set()
    for path in sorted(repo.glob("Pulumi.*.yaml")):
        config = (yaml.safe_load(path.read_text()) or {}).get("config") or {}
        if config.get("aws:region"):
            regions.add(config["aws:region"])
        cluster = config.get("myelin:cluster") or {}
        for pool in ("cpu_nodes", "gpu_nodes"):
            types.update((cluster.get(pool) or {}).get("instance_types") or [])
        if (cluster.get("system_nodes") or {}).get("instance_type"):
            types.add(cluster["system_nodes"]["instance_type"])
    return types, regions


def _memory_gib(raw: str, where: str) -> float:
    value, _, unit = raw.replace(",", "").partition(" ")
    if unit != "GiB":
        raise PriceListError(f"{where}: memory {raw!r} is not in GiB")
    return float(value)


def parse(documents: Iterable[dict[str, Any] | str], types: set[str], regions: set[str]
          ) -> tuple[dict[str, tuple[int, float, int]], dict[str, dict[str, float]]]:
    """(instances, on_demand) from price-list documents: instance type -> (vCPUs, memory GiB, GPUs), and
    region -> instance type -> USD per hour."""
    instances: dict[str, tuple[int, float, int]] = {}
    prices: dict[str, dict[str, list[float]]] = {}
    for doc in documents:
        if isinstance(doc, str):
            doc = json.loads(doc)
        product = doc.get("product") or {}
        attrs = product.get("attributes") or {}
        itype, region = attrs.get("instanceType"), attrs.get("regionCode")
        if itype not in types or region not in regions:
            continue
        if any(attrs.get(k) != v for k, v in LINUX_ON_DEMAND.items()):
            continue
        where = f"{itype} in {region}"
        shape = (int(attrs["vcpu"]), _memory_gib(attrs["memory"], where), int(attrs.get("gpu") or 0))
        if instances.setdefault(itype, shape) != shape:
            raise PriceListError(f"{itype}: two shapes in the price list, {instances[itype]} and {shape}")
        hourly = []
        for term in ((doc.get("terms") or {}).get("OnDemand") or {}).values():
            for dim in (term.get("priceDimensions") or {}).values():
                if dim.get("unit") == "Hrs" and "USD" in (dim.get("pricePerUnit") or {}):
                    hourly.append(float(dim["pricePerUnit"]["USD"]))
        if len(hourly) != 1:
            raise PriceListError(f"{where}: expected one on-demand hourly USD price, found {hourly}")
        prices.setdefault(region, {}).setdefault(itype, []).append(hourly[0])
    out: dict[str, dict[str, float]] = {}
    for region in sorted(regions):
        for itype in sorted(types):
            found = prices.get(region, {}).get(itype, [])
            if len(set(found)) != 1:
                raise PriceListError(f"{itype} in {region}: {'no' if not found else 'several'} Linux on-demand "
                                     f"prices in the price list {sorted(set(found))}")
            out.setdefault(region, {})[itype] = found[0]
    return dict(sorted(instances.items())), out


def fetch_live(types: set[str], regions: set[str]) -> list[str]:  # pragma: no cover - needs AWS credentials
    import boto3

    client = boto3.client("pricing", region_name=PRICING_ENDPOINT_REGION)
    documents: list[str] = []
    for region in sorted(regions):
        for itype in sorted(types):
            filters = [{"Type": "TERM_MATCH", "Field": "regionCode", "Value": region},
                       {"Type": "TERM_MATCH", "Field": "instanceType", "Value": itype}]
            filters += [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in LINUX_ON_DEMAND.items()]
            for page in client.get_paginator("get_products").paginate(ServiceCode="AmazonEC2", Filters=filters):
                documents.extend(page["PriceList"])
    return documents


def render(instances: dict[str, tuple[int, float, int]], on_demand: dict[str, dict[str, float]], as_of: str,
           source: str) -> str:
    return (
        '"""EC2 on-demand prices for the local cost estimate (myelin.cost): generated, do not edit.\n\n'
        "Written by scripts/refresh_prices.py; rerun it to refresh (README, What a prediction costs).\n"
        '"""\n\n'
        f"AS_OF = {as_of!r}\n"
        f"SOURCE = {source!r}\n"
        "#: Linux, shared tenancy, on-demand: US dollars per instance hour, by region, then instance type.\n"
        f"ON_DEMAND = {pprint.pformat(on_demand, width=110, sort_dicts=True)}\n"
        "#: Instance type -> (vCPUs, memory GiB, GPUs), from the same price list products.\n"
        f"INSTANCES = {pprint.pformat(instances, width=110, sort_dicts=True)}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--price-list", type=Path, help="a JSON array of saved price-list documents (offline)")
    parser.add_argument("--instance-type", action="append", default=[], help="add an instance type")
    parser.add_argument("--region", action="append", default=[], help="add a region")
    parser.add_argument("--as-of", default=dt.date.today().isoformat(), help="the prices' date (default: today)")
    parser.add_argument("--output", type=Path, default=TABLE, help=f"where to write the table (default: {TABLE})")
    args = parser.parse_args(argv)
    types, regions = stack_targets()
    types |= set(args.instance_type)
    regions |= set(args.region)
    if args.price_list:
        documents = json.loads(args.price_list.read_text())
        source = f"AWS Price List documents saved in {args.price_list.name} (Linux, shared tenancy, on-demand)"
    else:
        documents = fetch_live(types, regions)
        source = "AWS Price List Query API, pricing:GetProducts for AmazonEC2 (Linux, shared tenancy, on-demand)"
    try:
        instances, on_demand = parse(documents, types, regions)
    except PriceListError as err:
        print(f"refresh_prices: {err}", file=sys.stderr)
        return 1
    args.output.write_text(render(instances, on_demand, args.as_of, source), encoding="utf-8")
    print(f"wrote {args.output}: {len(instances)} instance types in {', '.join(sorted(on_demand))} as of {args.as_of}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
