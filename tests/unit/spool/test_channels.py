"""The agent's channel spools: one start-up warning when the spools sharing a file system
may grow, together, past what it has free (each alone may fit), and whether any of them
is on a full disk (the FAULT LED)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.spool import write_spool_key
from agent.spool.channels import ChannelSpools
from tests.tmpfs import Filler, small_tmpfs

MiB = 1 << 20


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "disk", "4m") as where:
        yield where


def _spools(tmp_path: Path, disk: Path, max_bytes: int) -> ChannelSpools:
    key = tmp_path / "spool.key"
    write_spool_key(key)
    cfg = SimpleNamespace(path=tmp_path / "tx.toml", spool=SimpleNamespace(
        dir=disk / "spool", key=str(key), max_bytes=max_bytes, fsync="never",
        fsync_interval_ms=50.0))
    return ChannelSpools(cfg, bytes(32))  # type: ignore[arg-type]


def test_warns_once_for_the_sum_over_channels_on_one_file_system(
        tmp_path: Path, disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    spools = _spools(tmp_path, disk, 3 * MiB)        # each fits the 4 MiB disk, two do not
    spools("plant")
    with caplog.at_level(logging.WARNING, "diode.spool"):
        spools.warn_if_no_room()
    assert caplog.records == []
    spools("lab")
    with caplog.at_level(logging.WARNING, "diode.spool"):
        spools.warn_if_no_room()
    [rec] = caplog.records
    msg = rec.getMessage()
    assert "2 channel(s)" in msg and "(lab, plant)" in msg and "may grow by 6.3 MB" in msg
    assert re.search(r"Fix: lower \[spool\] max_bytes to (1\.9|2\.0) MB or less, or free space",
                     msg), msg
    for sp in spools.opened.values():
        sp.close()


def test_disk_full_is_any_spool_in_a_full_disk_episode(tmp_path: Path, disk: Path) -> None:
    spools = _spools(tmp_path, disk, MiB)
    a, b = spools("plant"), spools("lab")
    assert a is not None and b is not None and not spools.disk_full()
    hog = Filler(disk / "hog")
    hog.take()
    for _ in range(3000):
        a.append(b"x" * 300)
        a.flush()
    assert a.disk_full and spools.disk_full() and not b.disk_full
    hog.close()
    a.close()
    b.close()
