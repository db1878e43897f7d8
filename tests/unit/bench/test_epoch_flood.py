"""`diode bench flood --core` runs and reports what it promises (figures not asserted)."""

from __future__ import annotations

from diode_tools.bench import flood_core
from diode_tools.bench.flood_core import run_core_bench


def test_bench_runs_small_and_every_genuine_frame_gets_through() -> None:
    out = run_core_bench(datagrams=6000, rounds=1)
    assert set(out["rates_per_s"]) == set(flood_core.KINDS)
    assert all(out["genuine_all_delivered"].values())
    assert out["keys_derived"]["new_epochs"] <= 2 * 20 + 70 * 6000 / flood_core.FLOOD_RATE + 1
    assert out["keys_derived"]["new_epochs_unbudgeted"] > 5000
    assert out["tx_restart_during_flood"]["frames_delivered"] == 200
    assert out["new_epochs_vs_garbage"] > 0 and out["new_epochs_vs_forged_live"] > 0
