"""`diode bench opcua` on a small plant: the figures exist and are sane."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from asyncua import Client

from diode_tools.bench.opcua import ASYNCUA_MAX, _plant, run_opcua_bench


@pytest.mark.slow
def test_bench_opcua_small() -> None:
    result = run_opcua_bench(nodes=200, window=2.0, timeout=60.0, peer_timeout=60.0)
    for key in ("nodes", "plant_rate", "sync_s", "updates_per_s", "fresh_fraction",
                "peer_sync_s"):
        assert key in result, result
    assert result["sync_s"] > 0 and result["plant"] == "node-opcua"
    assert 0 < result["first_value_s"] <= result["sync_s"] + 1  # two probes, polled apart
    assert result["model_bytes"] > 1000   # a compressed model of 200 variables and more
    assert result["tx_rss_mb"] > 0 and result["rx_rss_mb"] > 0
    assert 0.0 <= result["fresh_fraction"] <= 1.0
    assert result["updates_per_s"] > 0
    if result["peer_sync_s"] is None:
        assert result["peer_error"]
    else:
        assert 0.0 <= result["peer_fresh_fraction"] <= 1.0


@pytest.mark.slow
def test_bench_opcua_says_when_it_skips_the_peer() -> None:
    result = run_opcua_bench(nodes=50, window=1.0, timeout=60.0, peer=False)
    assert result["peer"] == "skipped (--no-peer)"
    assert "peer_sync_s" not in result and result["sync_s"] > 0


def test_the_plant_is_node_opcua_with_the_names_the_probes_read(tmp_path: Path) -> None:
    nodes = 250
    plant = _plant(nodes, 0, tmp_path)

    async def read(i: int) -> tuple[str, float]:
        async with Client(plant.endpoint, timeout=30) as c:
            node = c.get_node(f"ns={await c.get_namespace_index(plant.namespace)};"
                              f"s={plant.node_id(i)}")
            return (await node.read_browse_name()).Name, await node.read_value()
    try:
        assert plant.kind == "node-opcua"
        assert asyncio.run(read(nodes - 1)) == (f"V{nodes - 1:05d}", float(nodes - 1))
    finally:
        plant.stop()


def test_our_asyncua_plant_is_refused_above_what_it_can_serve(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at most 20000 variables"):
        _plant(ASYNCUA_MAX + 1, 0, tmp_path, "asyncua")
