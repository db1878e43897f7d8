"""TX's recovery window: the frames of the last `seconds`, sent again within a share of
the link, so an RX that was down (a restart, a swapped board) gets what it missed. Sans-IO.

A one-way link has no way for RX to ask, so TX keeps sending the recent past
in the link's spare time, in cycles:

```
frame's body ─► keep (seq, when, body) ─► window (oldest first)
                                             │ leaves after `seconds`, or oldest first
 take(now, budget) ◄── cursor walks oldest   │ beyond `max_bytes`
   │  to newest, a cycle at most every       ▼
   │  `min_cycle` s; frames younger than `min_age` wait
   ▼
 LinkSender.resend: each sealed anew (its k-th re-send, its age) ─► the driver, within its share
 heartbeat ◄── `oldest`: the oldest seq still kept (RX gives up what it misses below it)
```

Each re-send is sealed anew by the sender (seal.py, `seal_resent`): the
header's RESENT flag set (and no other), the count k of its re-sends in clear,
and its age in front of the body, under a nonce of its own (1 + k), so it is
authenticated as a re-send, never reuses a nonce, and tells RX how long the
frame waited (an MQTT message's expiry counts that time). RX delivers a resent
frame only if that frame is missing from what it had of the epoch, never twice,
and skips the others from their header (receiver.py). A frame is sent again
only once it is `min_age` old, after its live copies went out.

The window covers an outage of RX of up to about `seconds` minus one cycle:
a cycle sends the whole window, so it takes the window's bytes at the
driver's share of the link (TX's status: `recovery_span_ms`, `recovery_bytes`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from agent.link import wire
from agent.link.seal import MAX_RESENDS


@dataclass(frozen=True)
class RecoveryParams:
    seconds: float = 60.0        # how far back frames are kept (0: no window)
    max_bytes: int = 16 << 20    # at most this many bytes kept, the oldest leaving first
    min_age: float = 1.0         # a frame is sent again only this long after it was sealed
    min_cycle: float = 1.0       # a cycle through the window starts at most this often


# Bytes a re-send takes beyond its body: header, k, age, AEAD tag.
RESENT_OVERHEAD = wire.HEADER_SIZE + 4 + 4 + wire.TAG_SIZE


class RecoveryWindow:
    def __init__(self, params: RecoveryParams) -> None:
        self.params = params
        # [seq, sealed at, body, re-sends so far]
        self._kept: deque[list[Any]] = deque()
        self._base = 0            # running index of _kept[0]
        self._cursor = 0          # running index of the next frame to send again
        self._cycling = False
        self._cycle_at = float("-inf")
        self.bytes = 0
        self.counters = {"resent": 0, "resent_bytes": 0, "recovery_cycles": 0,
                         "recovery_evicted": 0}

    def keep(self, seq: int, body: bytes, now: float) -> None:
        """A frame just sealed: its body, to seal again when it is re-sent."""
        self._kept.append([seq, now, body, 0])
        self.bytes += len(body)
        self._evict(now)

    def oldest(self, now: float, next_seq: int) -> int:
        """The oldest seq kept; `next_seq` (the sender's next) when nothing is."""
        self._evict(now)
        return self._kept[0][0] if self._kept else next_seq

    def span(self, now: float) -> float:
        """Seconds of the past the window holds now."""
        return now - self._kept[0][1] if self._kept else 0.0

    def next_due(self, now: float) -> float | None:
        """When `take` will next hand something out (None: nothing kept)."""
        self._evict(now)
        if not self._kept:
            return None
        if self._cycling:
            i = self._cursor - self._base
            if i < len(self._kept):
                return max(now, self._kept[i][1] + self.params.min_age)
        return max(self._cycle_at + self.params.min_cycle,
                   self._kept[0][1] + self.params.min_age)

    def take(self, now: float, budget: int, overhead: int = 0
             ) -> list[tuple[int, int, int, bytes]]:
        """(seq, k, age in ms, body) of the frames due again now: `budget` bytes at most,
        each costing its re-send's size plus `overhead`; k: its k-th re-send."""
        self._evict(now)
        kept, min_age = self._kept, self.params.min_age
        if not self._cycling:
            if not kept or now < self._cycle_at + self.params.min_cycle \
                    or now - kept[0][1] < min_age:
                return []
            self._cycling, self._cycle_at, self._cursor = True, now, self._base
            self.counters["recovery_cycles"] += 1
        out: list[tuple[int, int, int, bytes]] = []
        spent = 0
        while True:
            i = self._cursor - self._base
            if i >= len(kept) or now - kept[i][1] < min_age:
                self._cycling = False   # through the window: the next cycle starts over
                break
            entry = kept[i]
            cost = len(entry[2]) + RESENT_OVERHEAD + overhead
            if spent + cost > budget:
                break
            if entry[3] <= MAX_RESENDS:
                out.append((entry[0], entry[3], int((now - entry[1]) * 1000), entry[2]))
                entry[3] += 1
                spent += cost
            self._cursor += 1
        self.counters["resent"] += len(out)
        self.counters["resent_bytes"] += spent
        return out

    def _evict(self, now: float) -> None:
        kept, horizon = self._kept, now - self.params.seconds
        while kept and (kept[0][1] < horizon or self.bytes > self.params.max_bytes):
            self._pop()

    def _pop(self) -> None:
        body = self._kept.popleft()[2]
        self.bytes -= len(body)
        self._base += 1
        self.counters["recovery_evicted"] += 1
        self._cursor = max(self._cursor, self._base)
