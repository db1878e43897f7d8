"""Events the link receiver reports, named as facts."""

from __future__ import annotations

from dataclasses import dataclass

from agent.link.records import Record


# Not frozen: RX makes one per message, and a frozen dataclass costs five times as
# much to build (0.53 vs 0.1 us here, a tenth of RX's time per message).
@dataclass(slots=True)
class RecordReceived:
    record: Record
    epoch: int
    seq: int
    recovered: bool = False   # from a frame RX missed, delivered late (missed.py)
    # ... missed from before this RX kept state (a new board): RX cannot place it after
    # what an earlier RX delivered, so the IT side may hold newer
    unplaced: bool = False
    age: float = 0.0          # seconds TX held it before it sent this copy (a late one)
    raw: bytes | None = None  # its bytes as TX encoded them, when RX keeps them (keep_raw)


@dataclass(frozen=True, slots=True)
class FramesLost:
    """Frames that never arrived in any copy: their records are gone."""
    epoch: int
    first_seq: int
    count: int
    while_away: bool = False   # sent before RX joined, and TX's recovery window has no more


@dataclass(frozen=True, slots=True)
class EpochChanged:
    """A TX started (or a board was swapped): the stream restarted."""
    old: int | None
    new: int


Event = RecordReceived | FramesLost | EpochChanged
