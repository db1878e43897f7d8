"""OPC UA DateTimes at their full 100 ns resolution through asyncua.

OPC UA encodes a DateTime as 100 ns ticks since 1601-01-01 UTC. asyncua turns
them into Python datetimes, which stop at microseconds, so a SourceTimestamp
of ...123.4567 µs crossed the gateway as ...123.456 µs: the last digit was
lost on TX (decoding) and could not be given back on RX (encoding).

`install()` wraps asyncua's two conversions (the binary codec calls them
through the `asyncua.ua` module at every use, so wrapping the names is enough):

- ticks -> datetime: when the ticks are not a whole microsecond, a `TickTime`
  (a datetime that also keeps the ticks); otherwise the plain datetime as before,
  so the common case costs nothing more.
- datetime -> ticks: a `TickTime` gives its ticks back, as long as it still is
  the instant they name (arithmetic on it makes a new datetime without them).

Installed once, by importing `agent.opcua.ua`, in every process that speaks
OPC UA through asyncua: TX's source, RX's mirror, the simulated plant.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from asyncua import ua
from asyncua.ua import uatypes

_to_ticks = uatypes.datetime_to_win_epoch
_from_ticks = uatypes.win_epoch_to_datetime


class TickTime(datetime):
    """A datetime that remembers its OPC UA ticks (100 ns)."""

    ticks: int

    @classmethod
    def of(cls, base: datetime, ticks: int) -> TickTime:
        t = cls(base.year, base.month, base.day, base.hour, base.minute, base.second,
                base.microsecond, base.tzinfo)
        t.ticks = ticks
        return t


def to_ticks(dt: datetime) -> int:
    ticks = _to_ticks(dt)
    extra = getattr(dt, "ticks", None)
    if extra is not None and extra // 10 == ticks // 10:
        return int(extra)
    return ticks


def from_ticks(ticks: int) -> datetime:
    base = _from_ticks(ticks)
    if ticks % 10 == 0 or ticks < 0 or _to_ticks(base) != ticks - ticks % 10:
        return base  # whole microseconds, or clamped to the ends of the range
    return TickTime.of(base, ticks)


def install() -> None:
    """Idempotent: asyncua's conversions keep 100 ns from now on, in this process."""
    if getattr(uatypes.datetime_to_win_epoch, "_diode", False):
        return
    for fn in (to_ticks, from_ticks):
        setattr(fn, "_diode", True)  # noqa: B010
    mod: Any = ua
    types: Any = uatypes
    types.datetime_to_win_epoch = to_ticks
    types.win_epoch_to_datetime = from_ticks
    mod.datetime_to_win_epoch = to_ticks
    mod.win_epoch_to_datetime = from_ticks
