"""The link benchmark: keys present, and delivery matches 1 - p**r."""

from __future__ import annotations

import pytest

from diode_tools.bench.link import run_link_bench

KEYS = {"loss", "repeat", "interleave", "frames_sent", "frames_delivered",
        "delivered_fraction", "theory", "datagrams", "seconds", "frames_per_s"}


@pytest.mark.parametrize(("loss", "repeat"), [(0.05, 3), (0.3, 2), (0.2, 1), (0.0, 1)])
def test_bench_matches_theory(loss: float, repeat: int) -> None:
    result = run_link_bench(loss, repeat, frames=20_000, seed=7)
    assert result.keys() >= KEYS
    assert result["loss"] == loss and result["repeat"] == repeat
    assert result["interleave"] == 8
    assert result["frames_sent"] == 20_000
    assert result["datagrams"] == 20_000 * repeat
    assert result["theory"] == pytest.approx(1 - loss**repeat)
    assert result["delivered_fraction"] == result["frames_delivered"] / result["frames_sent"]
    tolerance = 5 * result["sigma"] + 1 / result["frames_sent"]
    assert abs(result["delivered_fraction"] - result["theory"]) <= tolerance, result
    assert result["late"] == 0
    assert result["seconds"] > 0 and result["frames_per_s"] > 0


def test_bench_is_deterministic_per_seed() -> None:
    a = run_link_bench(0.2, 2, frames=2_000, seed=3)
    b = run_link_bench(0.2, 2, frames=2_000, seed=3)
    c = run_link_bench(0.2, 2, frames=2_000, seed=4)
    assert a["frames_delivered"] == b["frames_delivered"]
    assert a["datagrams_dropped"] == b["datagrams_dropped"]
    assert (c["frames_delivered"], c["datagrams_dropped"]) != (
        a["frames_delivered"], a["datagrams_dropped"])


@pytest.mark.parametrize(("loss", "repeat", "frames"), [(1.0, 1, 10), (-0.1, 1, 10),
                                                        (0.1, 0, 10), (0.1, 1, 0)])
def test_bench_rejects_bad_arguments(loss: float, repeat: int, frames: int) -> None:
    with pytest.raises(ValueError):
        run_link_bench(loss, repeat, frames=frames)
