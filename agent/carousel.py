"""One scheduler for every carousel of every TX source. Sans-IO: `now` comes in.

Each carousel runs a round every `period` seconds and sends its records within
`share` of the link's bit rate, from a token bucket of its own; a round that
cannot finish within its period is reported (`overruns`), since RX then
converges more slowly than configured.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from agent.adapter import Carousel
from agent.link.pacer import TokenBucket


@dataclass(frozen=True)
class Overrun:
    """A round took longer than its period."""
    owner: str
    carousel: str
    took: float
    records: int


@dataclass
class _Running:
    owner: str
    carousel: Carousel
    bucket: TokenBucket
    next_start: float
    round: Iterator[bytes] | None = None
    started: float = 0.0
    sent: int = 0


class CarouselScheduler:
    def __init__(self, rate_bps: float, burst_bytes: int) -> None:
        self.rate_bps = rate_bps
        self.burst_bytes = burst_bytes
        self._running: list[_Running] = []
        self.overruns: list[Overrun] = []

    def add(self, owner: str, carousel: Carousel, now: float) -> None:
        first = carousel.period if carousel.first_delay is None else carousel.first_delay
        bucket = TokenBucket(self.rate_bps * carousel.share, self.burst_bytes, now)
        self._running.append(_Running(owner, carousel, bucket, now + first))

    def poll(self, now: float, limit: int) -> list[bytes]:
        """The records due now, each read from its source at this call."""
        out: list[bytes] = []
        for r in self._running:
            if r.round is None:
                if now < r.next_start:
                    continue
                r.round, r.started, r.sent = r.carousel.records(), now, 0
                r.next_start = now + r.carousel.period
            while len(out) < limit and r.bucket.delay(1, now) == 0:
                data = next(r.round, None)
                if data is None:
                    took = now - r.started
                    if took > r.carousel.period:
                        self.overruns.append(Overrun(r.owner, r.carousel.name, took, r.sent))
                    r.round = None
                    break
                r.bucket.take(len(data), now)
                r.sent += 1
                out.append(data)
        return out

    def next_deadline(self, now: float) -> float | None:
        """When `poll` has something to do next."""
        times = [now + r.bucket.delay(1, now) if r.round is not None else r.next_start
                 for r in self._running]
        return min(times, default=None)
