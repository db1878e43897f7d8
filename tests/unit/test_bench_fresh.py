"""bench opcua's freshness test of one variable: the mirror at most 2 s behind the plant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from asyncua import ua

from diode_tools.bench.opcua import _fresh

T = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)


def dv(value: float, at: datetime) -> ua.DataValue:
    return ua.DataValue(ua.Variant(value, ua.VariantType.Double), SourceTimestamp=at)


def test_fresh_is_the_mirror_at_most_two_seconds_behind() -> None:
    old, new = T - timedelta(seconds=10), T - timedelta(seconds=0.5)
    assert _fresh(dv(1.0, new), dv(1.0, old), T)                            # the same value
    assert _fresh(dv(2.0, new), dv(1.0, old), T)                            # changed 0.5 s ago
    assert not _fresh(dv(2.0, T - timedelta(seconds=3)), dv(1.0, old), T)   # missed for 3 s
    assert _fresh(dv(2.0, old), dv(3.0, new), T)                            # the mirror newer
    assert not _fresh(dv(2.0, old), ua.DataValue(ua.Variant(1.0)), T)       # no time to compare
