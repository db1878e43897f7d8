"""When the OPC UA source tries its server again. Pure: `now` comes in.

| what happened                              | next try                                  |
|--------------------------------------------|-------------------------------------------|
| a connected session was lost               | after `low`, for `fast_for` seconds        |
| a try failed (unreachable, session failed) | fast phase: `low`; after it: doubling to `high` |
| the server refused us (certificate, policy) | doubling from `refused_first` to `high`   |
| a session reached "connected"              | back to the start                          |

A server that was reachable a moment ago most likely restarts (a plant
restart, a failover): retrying it every `low` seconds at first costs it one
refused TCP connection per try, and gets the mirror Good again seconds after it
is back instead of up to `high` later. A server that stays away, or refuses us
until someone fixes a setting, is left alone more and more.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Backoff:
    low: float
    high: float
    fast_for: float
    refused_first: float = 5.0
    _delay: float = 0.0
    _lost_at: float | None = None

    def __post_init__(self) -> None:
        self._delay = self.low

    def connected(self) -> None:
        self._delay = self.low
        self._lost_at = None

    def lost(self, now: float) -> None:
        """A session that was connected ended: the fast phase starts."""
        self._delay = self.low
        self._lost_at = now

    def failed(self, now: float) -> float:
        """A try failed: seconds until the next one."""
        if self._lost_at is not None and now - self._lost_at < self.fast_for:
            return self.low
        self._lost_at = None
        delay = self._delay
        self._delay = min(self._delay * 2, self.high)
        return delay

    def refused(self) -> float:
        """The server refused us: no fast phase; seconds until the next try."""
        self._lost_at = None
        delay = max(self._delay, min(self.refused_first, self.high))
        self._delay = min(delay * 2, self.high)
        return delay
