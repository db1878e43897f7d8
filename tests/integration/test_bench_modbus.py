"""`diode bench modbus`, short: the figures exist, merging beats one request per value,
and the PLCs saw no write."""

from __future__ import annotations

from diode_tools.bench.modbus import run_modbus_bench


def test_bench_modbus_short() -> None:
    r = run_modbus_bench(cycles=5)
    assert r["registers"] == 1000 and r["devices"] == 3
    assert r["requests_per_cycle"] == 21 < r["baseline_requests_per_cycle"] == r["values"]
    assert r["cycle_ms"] > 0 and r["baseline_cycle_ms"] > 0 and r["budget_cycle_ms"] > 0
    assert r["contiguous"] == {125: 1, 250: 2, 500: 4, 1000: 8, 2000: 16}
    assert r["writes"] == 0 and r["plc_requests"] > 0
