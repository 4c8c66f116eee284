"""scripts/refresh_prices.py against a small saved sample in the AWS Price List format (no AWS access here)."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from conftest import ROOT

SAMPLE = ROOT / "tests" / "cost" / "data" / "aws-price-list-sample.json"
sys.path.insert(0, str(ROOT / "scripts"))
import refresh_prices  # noqa: E402


def test_parses_the_linux_shared_on_demand_price_and_skips_the_rest():
    docs = json.loads(SAMPLE.read_text())
    instances, prices = refresh_prices.parse(docs, {"m6i.large", "g5.xlarge"}, {"us-west-2"})
    # Windows, dedicated tenancy, SQL pre-installed, unused reservations, other regions, reserved terms: skipped.
    assert prices == {"us-west-2": {"g5.xlarge": 1.006, "m6i.large": 0.096}}
    assert instances == {"g5.xlarge": (4, 16.0, 1), "m6i.large": (2, 8.0, 0)}


def test_a_missing_or_ambiguous_price_is_an_error_naming_it():
    docs = json.loads(SAMPLE.read_text())
    with pytest.raises(refresh_prices.PriceListError, match=r"m7i.large in us-west-2: no Linux on-demand prices"):
        refresh_prices.parse(docs, {"m6i.large", "m7i.large"}, {"us-west-2"})
    doubled = docs + [docs[0].replace("AAAAEXAMPLE0001", "AAAAEXAMPLE0009").replace("0.0960000000", "0.0970000000")]
    with pytest.raises(refresh_prices.PriceListError, match=r"m6i.large in us-west-2: several"):
        refresh_prices.parse(doubled, {"m6i.large"}, {"us-west-2"})


def test_writes_a_dated_table_with_its_source(tmp_path):
    out = tmp_path / "ec2_prices.py"
    code = refresh_prices.main(["--price-list", str(SAMPLE), "--as-of", "2026-11-01", "--output", str(out),
                                "--instance-type", "g5.xlarge"])
    # The committed stacks name instance types the sample does not price: an error, nothing written.
    assert code == 1 and not out.exists()
    spec = importlib.util.spec_from_file_location("table", out)
    text = refresh_prices.render(*refresh_prices.parse(json.loads(SAMPLE.read_text()), {"m6i.large"}, {"us-west-2"}),
                                 "2026-11-01", "sample")
    out.write_text(text)
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    assert (table.AS_OF, table.SOURCE) == ("2026-11-01", "sample")
    assert table.ON_DEMAND == {"us-west-2": {"m6i.large": 0.096}} and table.INSTANCES == {"m6i.large": (2, 8.0, 0)}
