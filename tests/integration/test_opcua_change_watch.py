"""Model changes seen within seconds without ModelChangeEvents (agent/opcua/change_watch.py).

```
plant (asyncua, or node-opcua) ─► diode tx ══ UDP ══► diode rx ─► mirror ◄── asyncua client
  adds, then removes a variable                                         ◄── node-opcua client
```

The full re-crawl is ten minutes away (`rebrowse_period` 600) and TX counts no
model change event from either plant: only the cheap check, every
`change_check_period` (default 2 s), can bring the change to the mirror this soon.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest
from asyncua import Client, ua

from diode_tools.sim.mosquitto import free_port
from diode_tools.sim.node_opcua import BigPlant, node_client
from diode_tools.sim.plant_opcua import PlantProcess
from tests.integration.conftest import Diode, wait_until


class Plant(Protocol):
    endpoint: str

    def add_variable(self) -> str: ...
    def remove_last_added(self) -> str: ...


@pytest.fixture(params=["asyncua", "node-opcua"])
def plant(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Plant]:
    if request.param == "asyncua":
        p = PlantProcess(free_port(), variables=2000, rate=100)
        try:
            yield p
        finally:
            p.stop()
    else:
        (tmp_path / "plant").mkdir()
        big = BigPlant(2000, 100.0, tmp_path / "plant")
        try:
            yield big
        finally:
            big.close()


async def _exists(endpoint: str, node_id: str) -> bool:
    async with Client(endpoint, timeout=5) as c:
        dv = await c.get_node(node_id).read_data_value(raise_on_bad_status=False)
        return dv.StatusCode is not None and dv.StatusCode.value != ua.StatusCodes.BadNodeIdUnknown


def _until(endpoint: str, node_id: str, present: bool, timeout: float) -> float:
    """Seconds until the mirror serves `node_id` (or no longer does), as asyncua sees it."""
    start = time.monotonic()
    wait_until(lambda: asyncio.run(_exists(endpoint, node_id)) is present, timeout,
               f"{node_id} {'on' if present else 'gone from'} the mirror", interval=0.2)
    return time.monotonic() - start


def test_an_added_and_a_removed_variable_reach_the_mirror_within_seconds(
        diode: Diode, plant: Plant) -> None:
    mirror = f"opc.tcp://127.0.0.1:{free_port()}/diode/"
    tx_doc, rx_doc = diode.tx_doc(), diode.rx_doc()
    del tx_doc["mqtt"], rx_doc["mqtt"]
    tx_doc["status"]["interval"] = 0.5
    tx_doc["opcua"] = [{"name": "plant", "endpoint": plant.endpoint, "rebrowse_period": 600.0}]
    rx_doc["opcua"] = [{"name": "plant", "endpoint": mirror}]
    rx = diode.start("rx", rx_doc)
    tx = diode.start("tx", tx_doc)
    diode.wait_status(rx, lambda s: s.get("opcua", {}).get("plant", {}).get("state")
                      == "serving", 60, "the mirror serving")
    diode.wait_status(tx, lambda s: s["counters"].get("opcua:plant.model_checks", 0) >= 2,
                      20, "TX checking the model")
    added = plant.add_variable().split()[0]
    took_add = _until(mirror, added, True, 30)
    # an independent client sees it too, with a value from the plant
    [dv] = node_client(mirror, [{"op": "read", "nodeId": added}])
    assert dv["status"] == "Good" and isinstance(dv["value"], int | float), dv
    removed = plant.remove_last_added().split()[0]
    took_remove = _until(mirror, removed, False, 30)
    [gone] = node_client(mirror, [{"op": "read", "nodeId": removed}])
    assert gone["status"] == "BadNodeIdUnknown", gone
    st = diode.wait_status(tx, lambda s: s["counters"]["opcua:plant.crawls"] >= 3, 10,
                           "TX crawled for each change")
    c = {k.removeprefix("opcua:plant."): v for k, v in st["counters"].items()}
    assert c["model_events"] == 0, c  # not an event: the check saw them
    assert c["model_changes_seen"] >= 2 and c["model_checks_unconfirmed"] == 0, c
    print(f"\nchange seen on the mirror: added {took_add:.1f} s, removed {took_remove:.1f} s")
    # a removal within five crawls' time of the addition waits for that gap: still seconds
    assert took_add < 15 and took_remove < 25, (took_add, took_remove)
