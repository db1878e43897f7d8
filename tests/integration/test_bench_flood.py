"""`diode bench flood`, short: a real RX process under each flood, the figures exist, and
nothing genuine was lost meanwhile."""

from __future__ import annotations

import pytest

from diode_tools.bench.flood import KINDS, run_flood_bench


@pytest.mark.slow
def test_bench_flood_short() -> None:
    seconds = 2.0
    # the flooder at nice 19: RX keeps its CPU, as behind a real link, so what is lost
    # is lost to what RX spends on a flood, not to a sender on its own CPU
    r = run_flood_bench(seconds=seconds, rounds=1, rate=300.0, nice=19)
    assert set(r["rates"]) == set(KINDS)
    for kind, figures in r["rates"].items():
        assert figures["rx_per_s"] > 1000 and figures["rx_per_cpu_s"] > 1000, (kind, figures)
        assert figures["sent_per_s"] > 1000, (kind, figures)
    assert r["flooder_nice"] == 19
    assert r["new_epochs_vs_garbage"] == pytest.approx(
        r["rates"]["new_epochs"]["rx_per_cpu_s"] / r["rates"]["garbage"]["rx_per_cpu_s"], rel=0.01)
    assert r["new_epochs_vs_garbage_wall"] > 0 and r["replays_vs_garbage"] > 0
    # genuine QoS 1 traffic went on during every flood, and none of it was lost to a
    # forged flood. Replays of the live epoch's frames each cost RX an AES open (it cannot
    # tell them from genuine ones before): a sender faster than that overflows RX's socket
    # buffer, and what its kernel dropped (`kernel_dropped`) is the only loss there may be.
    assert all(n > 0.5 * 300 * seconds for n in r["genuine_published"].values()), r
    why = (r["per_round"], r["tx_dropped"], r["rx_sink"])
    for kind in ("garbage", "new_epochs"):
        assert r["genuine_lost"][kind] == r["frames_lost"][kind] == 0, why
    assert r["genuine_lost"]["replays"] == 0 or r["kernel_dropped"]["replays"] > 0, why
    assert r["tx_dropped"] == 0, why
    # a new-epoch flood gets keys from the budget only (ciphers.py: bursts of 20, then
    # 20/s and 50/s), garbage and replays none; the live epoch was never left
    assert 0 < r["keys_derived"]["new_epochs"] <= 2 * 20 + 70 * (seconds + 10), r
    assert r["keys_derived"]["garbage"] == r["keys_derived"]["replays"] == 0, r
    assert r["rx_epochs"] == 1
