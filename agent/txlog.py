"""TX's own warnings and errors, visible from IT.

```
TX: logging (any thread) ─► TxLogHandler: WARNING and up, at most RATE a minute ─► bounded queue
                                          (the rest counted, the count sent along)      │
    TxCore ◄── TxLogSource.take() ◄──────────────────────────────────────────────────────┘
RX: RxCore ─► TxLog record ─► RX's log ("TX: ...") and the last few in the status file
```

Not a channel: every TX sends its log, and RX shows it, with no config. The
source is the TX agent's own, beside the channels' (it is not among the
heartbeat's sources and does not count for the LEDs), so a flood of OT traffic
cannot hold it back: like every source it gets its turn in each TxCore pass.

| tag | record | fields                                           |
|-----|--------|--------------------------------------------------|
| 9   | TxLog  | time, level, logger, message, suppressed         |

`suppressed`: records the rate limit dropped just before this one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.adapter import Carousel, SourceState
from agent.link import records
from agent.link.records import RecordError, register

RATE = 30            # records a minute, in a burst of up to as many
MAX_MESSAGE = 1000   # characters kept of one message
_QUEUE = 200         # records waiting for the link (a stuck link drops the oldest)


@register
@dataclass(frozen=True, slots=True)
class TxLog:
    TAG = 9
    time: float
    level: int
    logger: str
    message: str
    suppressed: int = 0

    def to_list(self) -> list[Any]:
        return [self.TAG, self.time, self.level, self.logger, self.message, self.suppressed]

    @classmethod
    def from_list(cls, f: list[Any]) -> TxLog:
        _, t, level, logger, message, suppressed = f
        if not (isinstance(logger, str) and isinstance(message, str)
                and isinstance(level, int) and isinstance(suppressed, int)
                and 0 <= level <= 100 and suppressed >= 0):
            raise RecordError("tx log record malformed")
        return cls(float(t), level, logger[:200], message[:MAX_MESSAGE], suppressed)


class TxLogHandler(logging.Handler):
    """Keeps TX's WARNING-and-up records for the link, at most `rate` a minute."""

    def __init__(self, rate: int = RATE, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(logging.WARNING)
        self.rate, self._clock = rate, clock
        self._tokens = float(rate)
        self._refilled = clock()
        self._pending_suppressed = 0
        self.queue: deque[TxLog] = deque(maxlen=_QUEUE)
        self.counters = {"logged": 0, "suppressed": 0, "overflow": 0}
        self.wake: Callable[[], None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def _refill(self, now: float) -> None:
        self._tokens = min(float(self.rate),
                           self._tokens + (now - self._refilled) * self.rate / 60.0)
        self._refilled = now

    def emit(self, record: logging.LogRecord) -> None:
        try:
            now = self._clock()
            self._refill(now)
            if self._tokens < 1.0:
                self._pending_suppressed += 1
                self.counters["suppressed"] += 1
                return
            self._tokens -= 1.0
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                message += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
            self._add(TxLog(record.created, record.levelno, record.name,
                            message[:MAX_MESSAGE], self._pending_suppressed))
        except Exception:  # a log handler must never break the code that logs
            self.handleError(record)

    def flush_suppressed(self) -> None:
        """When records were suppressed and none came since: one record that says so, once
        the limit allows it (called from the pump)."""
        if not self._pending_suppressed:
            return
        self.acquire()
        try:
            now = self._clock()
            self._refill(now)
            if self._pending_suppressed and self._tokens >= 1.0:
                self._tokens -= 1.0
                self._add(TxLog(time.time(), logging.WARNING, "diode.tx",
                                f"{self._pending_suppressed} more warning(s) or error(s) "
                                f"suppressed (at most {self.rate} a minute cross the link)",
                                self._pending_suppressed))
        finally:
            self.release()

    def _add(self, rec: TxLog) -> None:
        self._pending_suppressed = 0
        if len(self.queue) == self.queue.maxlen:
            self.counters["overflow"] += 1  # the link is stuck: the oldest goes
        self.queue.append(rec)
        self.counters["logged"] += 1
        wake, loop = self.wake, self.loop
        if wake is None or loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(wake)


class TxLogSource:
    """A Source (agent/adapter.py) for the TX core, fed by a TxLogHandler."""

    key = "tx:log"
    state = SourceState.CONNECTED
    carousels: tuple[Carousel, ...] = ()

    def __init__(self, handler: TxLogHandler) -> None:
        self.handler = handler
        self.sent = 0

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def take(self, wall: float, limit: int) -> list[tuple[bytes | None, object]]:
        self.handler.flush_suppressed()
        q = self.handler.queue
        out: list[tuple[bytes | None, object]] = []
        while q and len(out) < limit:
            out.append((records.encode(q.popleft()), None))
        self.sent += len(out)
        return out

    def framed(self, tags: list[object]) -> None:
        pass

    def rewind(self) -> None:
        pass  # log lines are held in memory only

    def waiting(self) -> int:
        return len(self.handler.queue)

    def dropped(self) -> int:
        return 0

    @property
    def counters(self) -> Mapping[str, int]:
        c = self.handler.counters
        return {"sent": self.sent, "suppressed": c["suppressed"], "overflow": c["overflow"]}

    def stats(self) -> dict[str, Any]:
        return {"queued": len(self.handler.queue)}

    def tick(self) -> None:
        pass

    def close(self) -> None:
        pass
