"""scripts/bench_epoch_flood.py runs and reports what it promises (figures not asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "bench_epoch_flood.py"


def test_bench_runs_small_and_every_genuine_frame_gets_through(
        capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("bench_epoch_flood", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--datagrams", "6000", "--rounds", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["rates_per_s"]) == set(bench.KINDS)
    assert all(out["genuine_all_delivered"].values())
    assert out["keys_derived"]["new_epochs"] <= 2 * 20 + 70 * 6000 / bench.FLOOD_RATE + 1
    assert out["keys_derived"]["new_epochs_unbudgeted"] > 5000
    assert out["tx_restart_during_flood"]["frames_delivered"] == 200
    assert out["new_epochs_vs_garbage"] > 0 and out["new_epochs_vs_forged_live"] > 0
