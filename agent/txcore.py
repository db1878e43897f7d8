"""The TX pump without I/O: sources in, datagrams out. `now` comes in.

```
Source[0..n].take() ─► encoded records (+ tags) ─┐
CarouselScheduler.poll() ─► state re-sends ──────┼─► LinkSender ─► datagrams ─► (driver paces and sends)
heartbeat() ─────────────────────────────────────┘        │
Source[i].framed(tags) ◄──────── sent() ◄─────────────────┘ (frames whose first copy went out)
Source[i].rewind()     ◄──────── failed() ◄───────────────┘ (sends failed: take it again later)
```

Each pass takes at most `batch` records from every source in turn, so a source
with a deep backlog never holds back the others, and at most `budget` bytes in
all: what the link sends in a short while (the driver's HORIZON). A backlog
then waits in the sources' queues, where its age is known (an MQTT message's
expiry counts down there), not in the sender's output, where a slow link would
hold it for seconds after its expiry was worked out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

from agent.adapter import Source
from agent.carousel import CarouselScheduler
from agent.link.sender import LinkSender

BATCH = 5000
CHUNK = 512  # most records taken from a source at a time while a budget is left
FIRST = 8    # most records of a pass's first take from a source, whatever their past sizes


class TxCore:
    def __init__(self, sender: LinkSender, sources: Sequence[Source],
                 carousels: CarouselScheduler, now: float) -> None:
        self.sender = sender
        self.sources = list(sources)
        self.carousels = carousels
        # recent record sizes, per source; unknown at first, so the first take is of one
        self._record_size = [float("inf")] * len(self.sources)
        for src in self.sources:
            for c in src.carousels:
                carousels.add(src.key, c, now)

    def poll(self, now: float, wall: float, batch: int = BATCH,
             budget: int | None = None) -> bool:
        """Move what is waiting into the sender, up to `batch` records per source and
        `budget` bytes in all (shared fairly); True when more waits (poll again soon)."""
        sender = self.sender
        more = False
        share = None if budget is None else max(1, budget // max(1, len(self.sources)))
        for i, src in enumerate(self.sources):
            taken = size = 0
            while taken < batch and (share is None or size < share):
                n = batch - taken
                if share is not None:  # as many as the budget left holds, by recent sizes;
                    # a pass starts carefully, as the records may have grown since
                    first = FIRST if taken == 0 else CHUNK
                    n = min(n, first, max(1, int((share - size) / self._record_size[i])))
                got = src.take(wall, n)
                if not got:
                    break
                taken += len(got)
                before = size
                for data, tag in got:
                    wrapped = None if tag is None else (i, tag)
                    if data is None:
                        if wrapped is not None:
                            sender.tag(wrapped)
                    else:
                        size += len(data)
                        sender.push(data, now, tag=wrapped)
                mean = (size - before) / len(got)
                old = self._record_size[i]
                self._record_size[i] = max(mean, 1.0) if old == float("inf") else \
                    max(mean, 0.75 * old + 0.25 * mean, 1.0)
                if share is None:
                    break
            more = more or src.waiting() > 0
        for data in self.carousels.poll(now, batch):
            sender.push(data, now)
        deadline = sender.next_deadline()
        while deadline is not None and deadline <= now:
            sender.handle_timer(now)
            deadline = sender.next_deadline()
        return more

    def datagrams(self) -> list[bytes]:
        return self.sender.pop_datagrams()

    def sent(self) -> None:
        """The datagrams popped so far went out: release what their frames carried."""
        framed = self.sender.pop_framed()
        if not framed:
            return
        by_source: dict[int, list[object]] = {}
        for tag in framed:
            i, inner = cast(tuple[int, object], tag)
            by_source.setdefault(i, []).append(inner)
        for i, tags in by_source.items():
            self.sources[i].framed(tags)

    def failed(self) -> None:
        """Sending the datagrams popped so far failed: release nothing they carried, and
        let every source take again what it had not released."""
        self.sender.forget_tags()
        for src in self.sources:
            src.rewind()

    def heartbeat(self, build: Callable[[], bytes], now: float) -> None:
        self.sender.push_heartbeat(build, now)

    def next_deadline(self, now: float) -> float | None:
        times = [t for t in (self.sender.next_deadline(), self.carousels.next_deadline(now))
                 if t is not None]
        return min(times, default=None)

    def drain(self, now: float) -> list[bytes]:
        """Everything still owed, at shutdown."""
        return self.sender.drain(now)
