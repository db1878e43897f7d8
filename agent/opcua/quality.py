"""The mirror's quality state machine, as a table. Pure: `now` comes in.

The mirror as a whole is at one level; each value follows it:

| mirror level | the link and TX's source are healthy | otherwise                          |
|--------------|--------------------------------------|------------------------------------|
| GOOD         | stay                                 | UNCERTAIN (values keep their value) |
| UNCERTAIN    | RECOVER to GOOD                      | BAD once unhealthy for `bad_after`  |
| BAD          | RECOVER to GOOD                      | stay                               |

- Nothing degrades before the link was first seen healthy: an RX that just
  started has nothing stale to flag.
- RECOVER lifts Bad values to Uncertain with their last value; each value turns
  Good with its next fresh value (a change or the next keyframe).
- A value that arrives while the mirror is not GOOD is shown Uncertain: it is new,
  but nothing says it is current.

Uncertain before Bad, because writing a Bad status nulls the value in asyncua
(docs/ARCHITECTURE.md, "Traps in our dependencies"): UncertainLastUsableValue
keeps it for IT clients.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Quality(IntEnum):
    GOOD = 0
    UNCERTAIN = 1
    BAD = 2


class Action(IntEnum):
    NONE = 0
    DEGRADE = 1   # every value below the new level goes down to it
    RECOVER = 2   # Bad values to Uncertain; Good again with fresh values


@dataclass
class QualityState:
    bad_after: float
    level: Quality = Quality.GOOD
    ever_healthy: bool = False
    unhealthy_since: float | None = None

    def step(self, healthy: bool, now: float) -> Action:
        """One evaluation; the action the mirror must apply to its values."""
        if healthy:
            self.ever_healthy = True
            self.unhealthy_since = None
            if self.level == Quality.GOOD:
                return Action.NONE
            self.level = Quality.GOOD
            return Action.RECOVER
        if not self.ever_healthy:
            return Action.NONE
        if self.unhealthy_since is None:
            self.unhealthy_since = now
        target = (Quality.BAD if now - self.unhealthy_since >= self.bad_after
                  else Quality.UNCERTAIN)
        if target <= self.level:
            return Action.NONE
        self.level = target
        return Action.DEGRADE

    def arriving(self) -> Quality:
        """The quality of a fresh value arriving now."""
        return Quality.GOOD if self.level == Quality.GOOD else Quality.UNCERTAIN
