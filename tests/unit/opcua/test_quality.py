"""The mirror's quality table (agent/opcua/quality.py), row by row."""

from __future__ import annotations

import pytest

from agent.opcua.quality import Action, Quality, QualityState

G, U, B = Quality.GOOD, Quality.UNCERTAIN, Quality.BAD

# (level before, healthy, seconds unhealthy so far or None, expected level, expected action)
TABLE = [
    (G, True, None, G, Action.NONE),
    (G, False, None, U, Action.DEGRADE),
    (U, False, 5.0, U, Action.NONE),
    (U, False, 30.0, B, Action.DEGRADE),
    (B, False, 60.0, B, Action.NONE),
    (U, True, 5.0, G, Action.RECOVER),
    (B, True, 60.0, G, Action.RECOVER),
]


@pytest.mark.parametrize(("level", "healthy", "unhealthy_for", "after", "action"), TABLE)
def test_each_row(level: Quality, healthy: bool, unhealthy_for: float | None, after: Quality,
                  action: Action) -> None:
    now = 1000.0
    q = QualityState(bad_after=30.0, level=level, ever_healthy=True,
                     unhealthy_since=None if unhealthy_for is None else now - unhealthy_for)
    assert q.step(healthy, now) == action
    assert q.level == after
    assert (q.unhealthy_since is None) == healthy


def test_nothing_degrades_before_the_link_was_first_healthy() -> None:
    q = QualityState(bad_after=1.0)
    assert q.step(False, 0.0) == Action.NONE and q.step(False, 100.0) == Action.NONE
    assert q.level == G
    assert q.step(True, 101.0) == Action.NONE
    assert q.step(False, 102.0) == Action.DEGRADE and q.level == U


def test_a_whole_outage_goes_uncertain_then_bad_then_good() -> None:
    q = QualityState(bad_after=10.0)
    seen = [(t, q.step(t < 5 or t >= 30, float(t)), q.level) for t in range(0, 40)]
    changes = [(t, a, lvl) for t, a, lvl in seen if a != Action.NONE]
    assert changes == [(5, Action.DEGRADE, U), (15, Action.DEGRADE, B), (30, Action.RECOVER, G)]


def test_values_arriving_while_degraded_are_uncertain() -> None:
    q = QualityState(bad_after=10.0, ever_healthy=True)
    assert q.arriving() == G
    q.step(False, 0.0)
    assert q.arriving() == U
    q.step(False, 20.0)
    assert q.arriving() == U
    q.step(True, 21.0)
    assert q.arriving() == G
