"""The plant budget (agent/opcua/budget.py) and what TX asks per monitored item
(agent/opcua/subscriptions.py), in memory."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from asyncua import ua

from agent.opcua.budget import PacedSession, PlantBudget
from agent.opcua.config import OpcuaSourceConfig
from agent.opcua.crawl import Limits
from agent.opcua.subscriptions import Monitoring


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_of_one_second_then_the_rate() -> None:
    clock = Clock()
    counters: dict[str, int] = {}
    budget = PlantBudget(4.0, counters, clock)
    for _ in range(4):
        assert budget.delay() == 0
        asyncio.run(budget.request())
    assert budget.delay() == 0.25
    clock.now += 0.25
    assert budget.delay() == 0
    asyncio.run(budget.request())
    assert counters == {"requests": 5, "budget_wait_ms": 0}
    # idle time refills at most one second's worth
    clock.now += 60
    for _ in range(4):
        asyncio.run(budget.request())
    assert budget.delay() > 0


def test_requests_wait_their_turn_on_the_real_clock() -> None:
    counters: dict[str, int] = {}
    budget = PlantBudget(20.0, counters)
    t0 = time.monotonic()

    async def many() -> None:
        for _ in range(40):  # 20 at once, 20 more at 20 a second
            await budget.request()
    asyncio.run(many())
    took = time.monotonic() - t0
    assert 0.9 <= took < 3.0, took
    assert counters["requests"] == 40 and counters["budget_wait_ms"] >= 900


class Recording:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    async def browse(self, parameters: Any) -> list[Any]:
        self.calls.append(("browse", time.monotonic()))
        return []

    async def browse_next(self, parameters: Any) -> list[Any]:
        self.calls.append(("browse_next", time.monotonic()))
        return []

    async def read(self, parameters: Any) -> list[Any]:
        self.calls.append(("read", time.monotonic()))
        return []


def test_the_paced_session_spends_the_budget_on_every_call() -> None:
    inner, counters = Recording(), {}
    paced = PacedSession(inner, PlantBudget(2.0, counters))

    async def calls() -> None:
        await paced.browse(ua.BrowseParameters())
        await paced.browse_next(ua.BrowseNextParameters())
        await paced.read(ua.ReadParameters())
    asyncio.run(calls())
    assert [c for c, _ in inner.calls] == ["browse", "browse_next", "read"]
    # two at once, the third half a second later
    assert inner.calls[2][1] - inner.calls[0][1] >= 0.45
    assert counters["requests"] == 3


def _monitoring(limits: Limits, **cfg: Any) -> Monitoring:
    config = OpcuaSourceConfig(name="plant", endpoint="opc.tcp://h:4840", **cfg)
    return Monitoring(None, config, limits, PlantBudget(10.0), iter(range(1, 10**6)), {},
                      lambda items: None, lambda: None, lambda status: None)


def test_sampling_asked_is_never_faster_than_the_node_allows() -> None:
    m = _monitoring(Limits())
    assert OpcuaSourceConfig(name="p", endpoint="opc.tcp://h:1").sampling_interval == 0.0
    assert m.sampling_ms("ns=2;s=A", {}) == 0.0
    assert m.sampling_ms("ns=2;s=A", {"ns=2;s=A": 500.0}) == 500.0
    slow = _monitoring(Limits(), sampling_interval=1.0)
    assert slow.sampling_ms("ns=2;s=A", {"ns=2;s=A": 500.0}) == 1000.0


def test_items_per_subscription_yields_to_the_servers_limit() -> None:
    assert _monitoring(Limits(), items_per_subscription=5000).per_subscription == 5000
    assert _monitoring(Limits(per_subscription=1200),
                       items_per_subscription=5000).per_subscription == 1200
    assert _monitoring(Limits(per_subscription=90000),
                       items_per_subscription=5000).per_subscription == 5000
