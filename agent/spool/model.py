"""What the spool hands out and reports: records, damage facts, stats, errors.

Two kinds of error, as in h11: `SpoolError` is ours (misuse, wrong key, a
spool already in use) and is raised; `SpoolFull` is one of them, for a record
the spool could not keep on a full disk, which its caller counts as dropped.
Damage found on disk is theirs (a tampered, truncated or replayed file) and
becomes a `SpoolDamage` fact that is counted, logged and kept in
`Spool.damage`, unless the spool was opened `strict`, when `SpoolDamaged` is
raised before anything is touched. A full disk is neither: it is never raised
(see `agent/spool/store.py`, "Full disk").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from agent.errors import SpoolError  # re-exported: the spool's own error

DamageKind = Literal["corrupt", "reordered", "truncated", "missing", "replayed", "foreign", "state"]
DAMAGE_KINDS: tuple[DamageKind, ...] = ("corrupt", "reordered", "truncated", "missing", "replayed",
                                        "foreign", "state")


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    """One appended record: `time` is the wall time of the append (Unix seconds)."""
    seq: int
    payload: bytes
    key: str | None
    time: float


@dataclass(frozen=True, slots=True)
class SpoolDamage:
    """Something on disk the spool did not write that way; never accepted silently."""
    kind: DamageKind
    segment: int | None
    offset: int | None
    seq: int | None
    message: str


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """One look at the spool, for `diode status` (asdict() is JSON-ready)."""
    fill_bytes: int
    max_bytes: int
    fill_fraction: float
    records: int                 # appended, not yet acknowledged nor dropped
    oldest_age_s: float | None   # wall-clock age of the oldest such record
    segments: int
    last_seq: int
    acked_seq: int
    durable_seq: int
    durable_ack: int
    dropped_oldest: int
    dropped_conflated: int
    dropped_full: int            # appends refused: the disk was full and nothing left to drop
    disk_full: bool              # its file system is full now (a full-disk episode)
    disk_full_episodes: int
    limit_bytes: int             # the bound in force: max_bytes, or lower when the disk holds less
    torn_tail: int
    damaged: int


class SpoolFull(SpoolError):
    """An append the spool could not keep at all: its file system is full and the spool
    has nothing left to drop to make room. The caller counts the record as dropped."""


class SpoolDamaged(SpoolError):
    """Raised in strict mode (and at runtime in strict mode) when damage is found."""

    def __init__(self, damage: tuple[SpoolDamage, ...]) -> None:
        self.damage = damage
        super().__init__("; ".join(d.message for d in damage))
