"""Events the link receiver reports, named as facts."""

from __future__ import annotations

from dataclasses import dataclass

from .records import Record


@dataclass(frozen=True, slots=True)
class RecordReceived:
    record: Record
    epoch: int
    seq: int


@dataclass(frozen=True, slots=True)
class FramesLost:
    """Frames that never arrived in any copy: their records are gone."""
    epoch: int
    first_seq: int
    count: int


@dataclass(frozen=True, slots=True)
class EpochChanged:
    """A TX started (or a board was swapped): the stream restarted."""
    old: int | None
    new: int


Event = RecordReceived | FramesLost | EpochChanged
