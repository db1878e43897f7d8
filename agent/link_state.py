"""RX's link state file: what the receiver remembers of epochs, kept across restarts.

The link receiver is sans-IO: it hands out its memory as plain data
(`LinkReceiver.memory()`, an `EpochMemory`) and takes it back at start. This
module only moves that data to and from a small JSON file on RX's data
partition (`[link] state_file`; on the boards /var/lib/diode/link-state.json).
Without the file RX still rejects replays of what it had in the current run, but
a restarted RX would take replays of frames it had before for new ones (see
agent/link/epochs.py).

Writes replace the file atomically (temporary file, rename). `keep` is called
from RX's timer loop: it writes at once when the followed epoch changed (with
fsync), and otherwise at most every `interval` seconds while the high-water
marks move (without fsync: the page cache outlives a crash of the agent). On a
clean stop the driver calls `keep(final=True)`. So after a crash of the agent
or a power cut, the file lags by up to `interval`: each save says how many
frames RX may deliver beyond its mark before the next (`uncertain`: twice what
came since the last save; 0 at a clean stop), and the restarted RX takes what
it then gets of those frames from the recovery window as unplaced (it may have
delivered them, and newer ones, before the crash: agent/link/missed.py).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from agent.link.epochs import EpochMemory

log = logging.getLogger("diode.rx")


class _Remembers(Protocol):
    epoch: int | None

    def memory(self) -> EpochMemory: ...


def _mark(memory: EpochMemory) -> int:
    """The high-water mark of the followed epoch (-1: none)."""
    return dict(memory.seen).get(memory.current, -1) if memory.current is not None else -1


class LinkStateFile:
    def __init__(self, path: Path | None, link_id: int, interval: float = 0.25) -> None:
        self.path, self.link_id, self.interval = path, link_id, interval
        self._written: EpochMemory | None = None
        self._written_at = float("-inf")
        self._failed_at = float("-inf")

    def load(self) -> EpochMemory | None:
        """The memory saved by the last run, or None (no file configured, none yet,
        or one that cannot be used: told in the log, and replaced at the next save)."""
        if self.path is None:
            log.warning("link state: no [link] state_file, so after a restart RX can neither "
                        "tell replays of earlier frames from new ones nor count what it "
                        "missed while it was down (TX's recovery window still brings it). "
                        "Fix: state_file = \"/var/lib/diode/link-state.json\" (on the data "
                        "partition)")
            return None
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            log.info("link state: %s does not exist yet; starting with no memory of "
                     "earlier epochs", self.path)
            return None
        except OSError as exc:
            log.error("link state: cannot read %s: %s; starting with no memory of earlier "
                      "epochs, so replays of frames from before this start are not "
                      "recognised. Fix: make it readable by the agent", self.path, exc.strerror)
            return None
        try:
            memory = EpochMemory.from_dict(json.loads(text))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            log.error("link state: %s is damaged (%s); starting with no memory of earlier "
                      "epochs, and it will be rewritten. Fix: nothing, unless this repeats "
                      "(then check the data partition)", self.path, exc)
            return None
        if memory.link_id != self.link_id:
            log.warning("link state: %s is for link id %d, this link is %d; starting with "
                        "no memory of earlier epochs", self.path, memory.link_id, self.link_id)
            return None
        self._written = memory
        log.info("link state: %d epoch(s) remembered from %s, following %s", len(memory.seen),
                 self.path, "none" if memory.current is None else f"{memory.current:016x}")
        return memory

    def keep(self, receiver: _Remembers, now: float, *, final: bool = False) -> None:
        """Save the receiver's memory when it changed (see the module docstring)."""
        if self.path is None:
            return
        last = self._written
        switched = last is None or receiver.epoch not in (None, last.current)
        if not (final or switched) and now - self._written_at < self.interval:
            return
        memory = receiver.memory()
        high = _mark(memory)
        before = _mark(last) if last is not None and last.current == memory.current else high
        # What a crash may have delivered beyond this mark before the next save: about as
        # much as came since the last one, twice over to be safe. A clean stop: nothing.
        memory = replace(memory, uncertain=0 if final else 2 * max(0, high - before) + 16)
        self._written_at = now
        if memory == last:
            return
        durable = final or last is None or memory.current != last.current
        try:
            self._write(memory, durable)
        except OSError as exc:
            if now - self._failed_at >= 60.0 or final:
                self._failed_at = now
                log.error("link state: cannot write %s: %s; a restarted RX would not know "
                          "the frames it had. Fix: check the data partition (space, "
                          "permissions)", self.path, exc.strerror)
            return
        self._written = memory

    def _write(self, memory: EpochMemory, durable: bool) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".link-state-")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(memory.to_dict(), f, separators=(",", ":"))
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
