"""The spool benchmark runs, reports its figures, and finds no plaintext on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from diode_tools.bench.spool import run_spool_bench

KEYS = {"records", "seconds", "records_per_s", "baseline_records_per_s", "ratio", "consumed",
        "durable_seq", "fsyncs", "plaintext_found"}


def test_bench_spool(tmp_path: Path) -> None:
    result = run_spool_bench(records=20_000, directory=tmp_path)
    assert result.keys() >= KEYS
    assert result["plaintext_found"] is False
    assert result["records_per_s"] > 0 and result["baseline_records_per_s"] > 0
    assert result["records"] == result["consumed"] == result["durable_seq"] == 20_000
    assert result["unacked_at_end"] > 0          # the plaintext search saw records still spooled
    assert result["fsyncs"] > 0
    assert list(tmp_path.iterdir()) == []        # cleaned up


def test_bench_spool_rejects_too_few_records() -> None:
    with pytest.raises(ValueError):
        run_spool_bench(records=10)
