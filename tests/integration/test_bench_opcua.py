"""`diode bench opcua` on a small plant: the figures exist and are sane."""

from __future__ import annotations

import pytest

from diode_tools.bench.opcua import run_opcua_bench


@pytest.mark.slow
def test_bench_opcua_small() -> None:
    result = run_opcua_bench(nodes=200, window=2.0, timeout=60.0, peer_timeout=60.0)
    for key in ("nodes", "plant_rate", "sync_s", "updates_per_s", "fresh_fraction",
                "peer_sync_s"):
        assert key in result, result
    assert result["sync_s"] > 0
    assert 0.0 <= result["fresh_fraction"] <= 1.0
    assert result["updates_per_s"] > 0
    if result["peer_sync_s"] is None:
        assert result["peer_error"]
    else:
        assert 0.0 <= result["peer_fresh_fraction"] <= 1.0
