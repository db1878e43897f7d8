"""What TX may ask of a plant server: service requests paced to a budget.

Observing must never disturb the plant. Every browse, read and monitored-item
request TX makes of one server (the crawl, the reconnect fingerprint, the first
read of every value, creating and deleting monitored items) waits its turn in
one `PlantBudget`, so a crawl or a subscription of a large address space is
spread over time at `requests_per_second` (bursts of at most one second's
worth), however large the server. Publish requests are not counted: they are
the subscription itself, one outstanding per subscription.

```
Crawler / fingerprint / read_limits ─► PacedSession ─┐
source: first read, create/delete monitored items ───┼─► PlantBudget.request() ─► server
```
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from asyncua import ua

from agent.link.pacer import TokenBucket
from agent.opcua.crawl import Session
from agent.opcua.raw_values import RawValue, read_raw


class PlantBudget:
    """`rate` requests per second, a burst of `max(1, rate)` (one second's worth).
    `counters` gets `requests` and `budget_wait_ms` (time requests waited their turn)."""

    def __init__(self, rate: float, counters: dict[str, int] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.burst = max(1, int(rate))
        # The link's bucket counts bytes; here one "byte" is one request.
        self._bucket = TokenBucket(rate * 8, self.burst, clock())
        self.counters = counters if counters is not None else {}
        self.counters.setdefault("requests", 0)
        self.counters.setdefault("budget_wait_ms", 0)
        self.waited = 0.0  # seconds

    def delay(self) -> float:
        """Seconds before the next request may go (0: now)."""
        return self._bucket.delay(1, self._clock())

    async def request(self) -> None:
        """Wait for a turn, then spend it."""
        while (wait := self.delay()) > 0:
            self.waited += wait
            self.counters["budget_wait_ms"] = int(self.waited * 1000)
            await asyncio.sleep(wait)
        self._bucket.take(1, self._clock())
        self.counters["requests"] += 1


class PacedSession:
    """The crawler's `Session` with every request within `budget`."""

    def __init__(self, session: Session, budget: PlantBudget) -> None:
        self._session = session
        self._budget = budget

    async def browse(self, parameters: ua.BrowseParameters) -> list[ua.BrowseResult]:
        await self._budget.request()
        return await self._session.browse(parameters)

    async def browse_next(self, parameters: ua.BrowseNextParameters) -> list[ua.BrowseResult]:
        await self._budget.request()
        return await self._session.browse_next(parameters)

    async def read(self, parameters: ua.ReadParameters) -> list[ua.DataValue]:
        await self._budget.request()
        return await self._session.read(parameters)

    async def read_raw(self, parameters: ua.ReadParameters) -> list[RawValue]:
        await self._budget.request()
        return await read_raw(self._session, parameters)
