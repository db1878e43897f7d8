"""Observing must never disturb the plant: what TX asks of an OPC UA server.

```
plant (node-opcua big_plant.mjs, or asyncua) ─► diode tx ══ UDP ══► diode rx ─► mirror
                                                                        └─ history (SQLite) ◄─ HistoryRead
```

- At the default sampling (0: the server's fastest, on change where it can) the
  changes of a variable that changes every 80 ms reach the mirror: the history
  holds the numbers the plant wrote. 100 ms sampling, the old default, lost a
  fifth of them (480 of 2,420 measured).
- A node's MinimumSamplingInterval is what TX asks for it, never less.
- Every request of a session waits its turn in the plant budget, and monitored
  items are spread over subscriptions of `items_per_subscription`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client

from diode_tools.sim.mosquitto import free_port
from diode_tools.sim.node_opcua import BigPlant, node_client
from diode_tools.sim.plant_opcua import PlantProcess, variable_id
from tests.integration.conftest import Diode, wait_until
from tests.integration.test_opcua_mirror_spec import raw, ua_history_all

VARIABLES = 20


@pytest.fixture
def big_plant(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[BigPlant]:
    rate, min_sampling, tick = request.param
    (tmp_path / "plant").mkdir()
    plant = BigPlant(VARIABLES, rate, tmp_path / "plant", min_sampling, tick)
    try:
        yield plant
    finally:
        plant.close()


def _start(diode: Diode, endpoint: str, tx_opcua: dict[str, Any] | None = None,
           rx_opcua: dict[str, Any] | None = None) -> tuple[Any, Any, str]:
    mirror = f"opc.tcp://127.0.0.1:{free_port()}/diode/"
    tx, rx = diode.tx_doc(), diode.rx_doc()
    del tx["mqtt"], rx["mqtt"]
    tx["status"]["interval"] = 0.5
    tx["opcua"] = [{"name": "plant", "endpoint": endpoint, **(tx_opcua or {})}]
    rx["opcua"] = [{"name": "plant", "endpoint": mirror, **(rx_opcua or {})}]
    rx_agent = diode.start("rx", rx)
    wait_until(rx_agent.status, 15, "RX listening (its status file)")
    tx_agent = diode.start("tx", tx)
    return tx_agent, rx_agent, mirror


def _history(diode: Diode, mirror: str, since: datetime) -> dict[str, list[Any]]:
    """Every value the mirror's history holds per plant variable since `since`."""
    async def read() -> dict[str, list[Any]]:
        async with Client(mirror, timeout=10) as c:
            return {f"V{i:05d}": await ua_history_all(
                c, f"ns=2;s=Plant.V{i:05d}", raw(since, datetime.now(UTC) + timedelta(1)))
                for i in range(VARIABLES)}
    return asyncio.run(read())


def _connected(diode: Diode, tx: Any) -> dict[str, Any]:
    return diode.wait_status(tx, lambda s: s["sources"].get("opcua:plant") == "connected",
                             60, "TX connected to the plant")


@pytest.mark.parametrize("big_plant", [(VARIABLES * 1000 / 80, 0, 80)], indirect=True)
def test_every_change_reaches_the_mirror_at_the_default_sampling(
        diode: Diode, big_plant: BigPlant, tmp_path: Path) -> None:
    # each variable changes every 80 ms, writing the next number of one plant-wide count;
    # node-opcua monitors it on change, in windows of 50 ms (its fastest)
    tx, _rx, mirror = _start(diode, big_plant.endpoint, rx_opcua={
        "history_nodes": ["ns=2;s=Plant"], "history_dir": str(tmp_path / "history")})
    st = _connected(diode, tx)
    assert st["counters"]["opcua:plant.sampling_limited"] == 0
    time.sleep(2.0)  # the first notifications repeat the values read: past them
    since = datetime.now(UTC)
    time.sleep(8.0)
    time.sleep(2.0)  # the history writes once a second: what the window saw is in it
    seen = sorted({int(dv.Value.Value) for values in _history(diode, mirror, since).values()
                   for dv in values})
    assert len(seen) > 1500, f"{len(seen)} values in 8 s of 250 changes a second"
    # the window's edges: a variable's first value may predate it; inside, nothing is missing
    inner = [v for v in seen if seen[0] + VARIABLES <= v <= seen[-1] - VARIABLES]
    missing = (inner[-1] - inner[0] + 1) - len(inner)
    # node-opcua folds two changes into one when its timers run late by 30 ms (a loaded
    # machine: 6 of 2,460 measured); 100 ms sampling loses a fifth
    assert missing <= len(inner) / 100, \
        f"{missing} of {inner[-1] - inner[0] + 1} changes never reached the mirror"


@pytest.mark.parametrize("big_plant", [(1000.0, 500, 100)], indirect=True)
def test_a_nodes_minimum_sampling_interval_is_what_tx_asks(
        diode: Diode, big_plant: BigPlant, tmp_path: Path) -> None:
    # each variable changes 50 times a second but says it cannot be sampled faster than 2
    tx, _rx, mirror = _start(diode, big_plant.endpoint, rx_opcua={
        "history_nodes": ["ns=2;s=Plant"], "history_dir": str(tmp_path / "history")})
    st = _connected(diode, tx)
    assert st["counters"]["opcua:plant.sampling_limited"] == VARIABLES
    time.sleep(1.0)
    since = datetime.now(UTC)
    time.sleep(5.0)
    time.sleep(2.0)
    history = _history(diode, mirror, since)
    for name, values in history.items():
        stamps = sorted(dv.SourceTimestamp for dv in values)
        assert len(stamps) >= 5, (name, len(stamps))
        gaps = [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:], strict=False)]
        # node-opcua samples every 500 ms: never two values closer than its timer's jitter
        assert min(gaps) >= 0.35, (name, gaps)


def test_requests_are_paced_and_items_spread_over_subscriptions(diode: Diode) -> None:
    plant = PlantProcess(free_port(), variables=300, rate=50)
    try:
        started = time.monotonic()
        tx, rx, mirror = _start(diode, plant.endpoint, tx_opcua={
            "requests_per_second": 5.0, "items_per_subscription": 100})
        st = _connected(diode, tx)
        took = time.monotonic() - started
        c = {k.removeprefix("opcua:plant."): v for k, v in st["counters"].items()}
        assert c["monitored_items"] >= 300, c
        assert c["subscriptions"] == math.ceil(c["monitored_items"] / 100), c
        # five requests a second after a burst of five: the session's requests took that long
        assert c["requests"] >= 20, c
        assert took >= (c["requests"] - 5) / 5.0 - 1, (took, c)
        assert c["budget_wait_ms"] > 0, c
        # and the mirror got every value through the many subscriptions, as an independent
        # client sees it
        wait_until(lambda: (rx.status() or {}).get("opcua", {}).get("plant", {}).get(
            "state") == "serving", 30, "the mirror serving")
        last = f"ns=2;s={variable_id(299)}"
        wait_until(lambda: node_client(mirror, [{"op": "read", "nodeId": last}])[0]["status"]
                   == "Good", 30, f"{last} Good on the mirror (node-opcua client)")
        plant_changes = c["changes"]
        st2 = diode.wait_status(tx, lambda s: s["counters"]["opcua:plant.changes"]
                                > plant_changes + 100, 30, "changes flowing")
        assert st2["counters"]["opcua:plant.monitor_errors"] == 0
    finally:
        plant.stop()
