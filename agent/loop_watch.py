"""How long the agent's event loop was blocked: counted, shown, logged.

One loop runs everything an agent does: the link's heartbeats and pacing, the
watchdog's timers, every adapter. A step that holds it (decoding a very large
OPC UA response, building a mirror of 100,000 nodes) delays all of them: TX's
heartbeats go out late, and RX judges the link on stale arrivals. So the stalls
are measured, not guessed: a timer asks to wake every `period` and records how
late it woke. A stall of `threshold` or more is counted (`loop_stalls`), the
longest is kept (`loop_stall_max_ms`), and a warning says so at most once a
`log_every`, with the count and the longest since the last one.

A long loop over a large result gives the event loop back every `SLICE`
seconds with `Slices`; a long step with no loop of ours in it (encoding a whole
model) goes to a worker thread instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

STALL = 0.5  # seconds: a wake-up this late means the loop was held up
SLICE = 0.02  # seconds of work a long loop does before it lets the others run


@dataclass
class LoopStalls:
    """Sans-IO: `tick(now)` at each wake-up; `counters` for the status and metrics."""

    period: float = 0.1
    threshold: float = STALL
    log_every: float = 60.0
    counters: dict[str, int] = field(default_factory=lambda: {
        "loop_stalls": 0, "loop_stall_max_ms": 0})
    _expected: float | None = None
    _logged_at: float = float("-inf")
    _unlogged: int = 0
    _unlogged_max: float = 0.0

    def tick(self, now: float) -> float:
        """The stall that ended at `now` (seconds the wake-up came late; 0.0: on time)."""
        late = 0.0 if self._expected is None else max(0.0, now - self._expected)
        self._expected = now + self.period
        if late >= self.threshold:
            self.counters["loop_stalls"] += 1
            ms = int(late * 1000)
            self.counters["loop_stall_max_ms"] = max(self.counters["loop_stall_max_ms"], ms)
            self._unlogged += 1
            self._unlogged_max = max(self._unlogged_max, late)
        return late

    def report(self, now: float) -> str | None:
        """A line to log (None: nothing new, or logged within `log_every`)."""
        if not self._unlogged or now - self._logged_at < self.log_every:
            return None
        line = (f"event loop blocked {self._unlogged} time(s) for {self.threshold:g} s or "
                f"more, the longest {self._unlogged_max:.2f} s: timers, heartbeats and the "
                "link's pacing ran late meanwhile")
        self._logged_at = now
        self._unlogged = 0
        self._unlogged_max = 0.0
        return line


async def watch(stalls: LoopStalls, log: logging.Logger) -> None:
    while True:
        now = time.monotonic()
        stalls.tick(now)
        if (line := stalls.report(now)) is not None:
            log.warning("%s", line)
        await asyncio.sleep(stalls.period)


class Slices:
    """`await slices()` in a long loop: yields to the event loop once `every` seconds of
    work have passed since the last yield, else returns at once (a clock read)."""

    def __init__(self, every: float = SLICE) -> None:
        self.every = every
        self._since = time.monotonic()

    async def __call__(self) -> None:
        if time.monotonic() - self._since >= self.every:
            await asyncio.sleep(0)
            self._since = time.monotonic()
