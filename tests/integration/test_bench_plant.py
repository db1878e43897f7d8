"""`diode bench plant` on a small plant: the figures exist and are sane."""

from __future__ import annotations

import pytest

from diode_tools.bench.plant import run_plant_bench


@pytest.mark.slow
def test_bench_plant_small() -> None:
    result = run_plant_bench(nodes=1000, rate=500.0, rounds=1, probe_timeout=60.0, old=False)
    assert result["alone_s"] > 0 and result["mirroring_s"] > 0, result
    assert result["mirroring_ratio"] == round(result["mirroring_s"] / result["alone_s"], 2)
    assert result["sync_s"] > 0
    tx = result["tx"]
    # every variable monitored, within the budget's counters, on change
    assert tx["monitored_items"] == 1000 and tx["subscriptions"] == 1, tx
    assert tx["requests"] > 0 and tx["changes"] > 0, tx
    assert "old_defaults_s" not in result
