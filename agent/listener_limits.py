"""What RX's listening sockets tell the log about clients they refuse: counted, one line
per period, never a traceback per connection.

A listener on the IT side (metrics, the OPC UA mirrors) meets scanners,
half-open connections and junk. Each refusal is a fact worth counting, but a
line (or a traceback) per junk connection lets anyone who can reach the port
flood the journal. `RefusalLog` logs the first refusal at once, then at most
one line per `period` seconds with the counts by reason since the last line:

```
metrics: refused 1084 connection(s) in the last 10 s: 1068 over the limit of 16,
16 idle or slow over 5 s; latest from 127.0.0.1:50012          (one line in the log)
```
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable


class RefusalLog:
    def __init__(self, logger: logging.Logger, what: str, period: float = 10.0,
                 level: int = logging.WARNING,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger, self.what, self.period, self.level = logger, what, period, level
        self.clock = clock
        self.counts: Counter[str] = Counter()  # since the last line
        self.totals: Counter[str] = Counter()  # since the start
        self._latest = ""
        self._last_line: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    def count(self, reason: str, peer: object = None, detail: str = "") -> None:
        """One refused or closed connection, for `reason` (a short fixed phrase: the
        lines count by it); `detail` is shown for the latest one only."""
        self.counts[reason] += 1
        self.totals[reason] += 1
        if peer is not None or detail:
            where = "" if peer is None else f" from {_peer(peer)}"
            self._latest = where + (f" ({detail})" if detail else "")
        now = self.clock()
        if self._last_line is None or now - self._last_line >= self.period:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop (tests): the next count or flush() writes it
            self._timer = loop.call_later(self._last_line + self.period - now, self.flush)

    def flush(self) -> None:
        """Write the line for what was counted since the last one, if anything."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.counts:
            return
        now = self.clock()
        total = sum(self.counts.values())
        reasons = ", ".join(f"{n} {reason}" for reason, n in self.counts.most_common())
        since = "" if self._last_line is None else f" in the last {now - self._last_line:.0f} s"
        latest = f"; latest{self._latest}" if self._latest else ""
        self.logger.log(self.level, "%s: refused or closed %d connection(s)%s: %s%s", self.what, total,
                        since, reasons, latest)
        self.counts.clear()
        self._last_line = now


def _peer(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peer)
