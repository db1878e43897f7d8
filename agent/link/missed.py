"""The frames RX missed before it joined the epoch it follows: what TX's recovery window
can still bring, and what counts as lost once it cannot. Sans-IO.

When RX joins a stream at frame `s0` (after a restart, a board swap, a link
that was down while TX restarted), frames below `s0` were sent while RX was
not receiving. From the high-water mark it saved (`epochs.py`) RX knows where
it stopped, so it knows exactly which frames it missed:

```
 ... delivered before the stop │ missed: wanted from TX's recovery window │ s0 ... live
                         high-water + 1                              s0 - 1
```

A missed frame is delivered once, when a copy of it arrives (a resent copy,
or a late live one). TX's heartbeats say the oldest frame its window still
keeps (`recovery_oldest`; a TX without a window says nothing): RX gives up
the missed frames below it, which then count as `lost` (and `missed`), a
frame each. A fresh RX (no saved state, nothing followed yet) missed nothing
it was owed: it takes what the window brings, and gives up the rest without
counting it. What it takes is *unplaced*: an earlier RX may have delivered it,
and newer records after it; so are the first frames after the mark when the
state file was saved before a crash, not at a clean stop (`placed_from`).
"""

from __future__ import annotations

# Most missed frames tracked: a byte each. Beyond them, the oldest are given up at once.
MAX_TRACKED = 1 << 20


class Missed:
    def __init__(self, lo: int, hi: int, owed: bool, placed_from: int | None = None) -> None:
        """Frames `lo` .. `hi - 1` were missed; `owed`: RX counts those it never gets;
        `placed_from`: below it, RX may have delivered them before a crash (None: all
        placed when owed, none when not)."""
        self.owed = owed
        self.placed_from = (lo if owed else hi) if placed_from is None else placed_from
        self.lo, self.hi = max(lo, hi - MAX_TRACKED), hi
        self.untracked = self.lo - lo      # given up at once (more than MAX_TRACKED)
        self._wanted = bytearray(b"\x01") * (hi - self.lo)
        self.wanted = hi - self.lo

    def wants(self, seq: int) -> bool:
        return self.lo <= seq < self.hi and self._wanted[seq - self.lo] == 1

    def got(self, seq: int) -> None:
        """A copy of `seq` (one it wants) was delivered."""
        self._wanted[seq - self.lo] = 0
        self.wanted -= 1

    def give_up_below(self, seq: int) -> tuple[int, int]:
        """Stop waiting for the frames below `seq`: (the first of them, how many were
        still wanted)."""
        first = self.lo
        k = min(max(seq, self.lo), self.hi) - self.lo
        n = self._wanted[:k].count(1)
        del self._wanted[:k]
        self.lo += k
        self.wanted -= n
        return first, n

    @property
    def done(self) -> bool:
        return self.wanted == 0
