"""RX's link state file (agent/link_state.py): the receiver's epoch memory on disk."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from agent.link.receiver import LinkReceiver
from agent.link_state import LinkStateFile

from .link.link_kit import LINK_ID, T0, Tx, epoch_at, feed, receiver, topics


def _rx_with_traffic(n: int = 10) -> tuple[LinkReceiver, Tx, list[bytes]]:
    tx = Tx(epoch_at(T0))
    rx = receiver()
    frames = tx.frames("m", range(n))
    feed(rx, frames)
    return rx, tx, frames


def test_no_file_configured_means_no_io(tmp_path: Path) -> None:
    state = LinkStateFile(None, LINK_ID)
    assert state.load() is None
    rx, _, _ = _rx_with_traffic()
    state.keep(rx, 0.0, final=True)
    assert list(tmp_path.iterdir()) == []


def test_saved_memory_makes_a_restarted_receiver_know_its_replays(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture
                                                                  ) -> None:
    path = tmp_path / "sub" / "link-state.json"
    caplog.set_level(logging.INFO, "diode.rx")
    state = LinkStateFile(path, LINK_ID)
    assert state.load() is None
    assert "does not exist yet" in caplog.text
    rx, tx, frames = _rx_with_traffic()
    state.keep(rx, 1.0, final=True)
    assert json.loads(path.read_text())["current"] == tx.epoch
    assert [p.name for p in path.parent.iterdir()] == ["link-state.json"]  # no temp left

    again = LinkStateFile(path, LINK_ID)
    memory = again.load()
    assert memory == rx.memory()
    restarted = receiver(memory=memory)
    assert feed(restarted, frames, now=10.0) == []
    assert restarted.counters["replayed"] == len(frames)
    assert topics(feed(restarted, tx.frames("m", range(10, 12)), now=10.1)) == ["m/10", "m/11"]


def test_keep_writes_an_epoch_change_at_once_and_progress_at_most_every_interval(
        tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = LinkStateFile(path, LINK_ID, interval=0.25)
    tx = Tx(epoch_at(T0))
    rx = receiver()
    feed(rx, tx.frames("m", range(3)))
    state.keep(rx, 0.0)                       # first save: at once
    saved = json.loads(path.read_text())
    assert dict(map(tuple, saved["seen"]))[tx.epoch] == 2
    feed(rx, tx.frames("m", range(3, 6)))
    state.keep(rx, 0.1)                       # progress within the interval: not yet
    assert json.loads(path.read_text()) == saved
    state.keep(rx, 0.3)
    assert dict(map(tuple, json.loads(path.read_text())["seen"]))[tx.epoch] == 5
    restarted_tx = Tx(epoch_at(T0 + 60))
    feed(rx, restarted_tx.frames("n", range(2)))
    state.keep(rx, 0.31)                      # a new epoch: at once
    assert json.loads(path.read_text())["current"] == restarted_tx.epoch


@pytest.mark.parametrize("content", ["{not json", '{"version": 9}', "[]", ""])
def test_a_damaged_file_is_told_and_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                            content: str) -> None:
    path = tmp_path / "state.json"
    path.write_text(content)
    state = LinkStateFile(path, LINK_ID)
    assert state.load() is None
    assert "is damaged" in caplog.text and str(path) in caplog.text
    rx, tx, _ = _rx_with_traffic()
    state.keep(rx, 0.0)
    assert json.loads(path.read_text())["current"] == tx.epoch   # rewritten


def test_a_file_of_another_link_is_ignored(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.json"
    rx, _, _ = _rx_with_traffic()
    LinkStateFile(path, LINK_ID).keep(rx, 0.0)
    assert LinkStateFile(path, LINK_ID + 1).load() is None
    assert "is for link id 7" in caplog.text


def test_a_failed_write_is_told_not_raised(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    state = LinkStateFile(blocker / "state.json", LINK_ID)   # its folder is a file
    rx, _, _ = _rx_with_traffic()
    state.keep(rx, 0.0)
    state.keep(rx, 0.5)                     # told once a minute, not per attempt
    assert caplog.text.count("cannot write") == 1
    state.keep(rx, 1.0, final=True)
    assert caplog.text.count("cannot write") == 2


def test_a_save_says_how_far_beyond_its_mark_a_crash_may_have_delivered(tmp_path: Path
                                                                        ) -> None:
    path = tmp_path / "link-state.json"
    state = LinkStateFile(path, LINK_ID, interval=0.25)
    tx = Tx(epoch_at(T0), recovery=True)
    rx = receiver()
    feed(rx, tx.frames("m", range(10)))
    state.keep(rx, 0.0)
    feed(rx, tx.frames("m", range(10, 40)))        # 30 frames in one interval
    state.keep(rx, 0.3)
    saved = json.loads(path.read_text())
    assert saved["seen"][-1][1] == 39 and saved["uncertain"] == 2 * 30 + 16
    # RX crashes having delivered 20 more; the restarted one gets them from the window
    # unplaced (it may have delivered them, and newer ones), the rest placed
    feed(rx, tx.frames("m", range(40, 60)))
    tx.frames("m", range(60, 130))
    again = receiver(LinkStateFile(path, LINK_ID).load())
    feed(again, tx.frames("m", range(130, 132)))
    got = [e for e in feed(again, tx.resent(range(40, 130))) if hasattr(e, "unplaced")]
    assert [e.seq for e in got if e.unplaced] == list(range(40, 40 + 76))
    assert [e.seq for e in got if not e.unplaced] == list(range(116, 130))
    # a clean stop: the mark is exact
    state.keep(again, 1.0, final=True)
    assert json.loads(path.read_text())["uncertain"] == 0
