"""The first crawl grows the mirror while TX is still crawling (agent/opcua/growth.py):
a plant whose budget keeps TX's crawl slow is browsable on the mirror, part by part,
before TX has read it all; the model the parts make is the one served, and a TX
restart (its model cached) sends no parts and changes nothing on the mirror.

```
plant (asyncua, 5,000 variables) ─► diode tx (5 requests/s) ══ UDP ══► diode rx ─► mirror ◄─ probe
```
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from asyncua import Client, ua

from agent.spool import write_spool_key
from diode_tools.sim.mosquitto import free_port
from diode_tools.sim.plant_opcua import PlantProcess, variable_id
from tests.integration.conftest import Diode, wait_until

VARIABLES = 5000


@pytest.fixture
def plant() -> Iterator[PlantProcess]:
    p = PlantProcess(free_port(), variables=VARIABLES, rate=100)
    try:
        yield p
    finally:
        p.stop()


async def _has(client: Client, i: int) -> bool:
    dv = (await client.read_attributes([client.get_node(f"ns=2;s={variable_id(i)}")],
                                       ua.AttributeIds.BrowseName))[0]
    return dv.StatusCode is None or dv.StatusCode.is_good()


def test_the_mirror_is_browsable_while_tx_still_crawls(diode: Diode, plant: PlantProcess
                                                        ) -> None:
    mirror = f"opc.tcp://127.0.0.1:{free_port()}/diode/"
    tx, rx = diode.tx_doc(), diode.rx_doc()
    del tx["mqtt"], rx["mqtt"]
    tx["status"]["interval"] = 0.2
    key = diode.tmp / "spool.key"
    write_spool_key(key)
    tx["spool"] = {"dir": str(diode.tmp / "spool-tx"), "key_file": str(key)}  # the model cache
    tx["opcua"] = [{"name": "plant", "endpoint": plant.endpoint, "requests_per_second": 5}]
    rx["opcua"] = [{"name": "plant", "endpoint": mirror}]
    rx_agent = diode.start("rx", rx)
    wait_until(rx_agent.status, 15, "RX listening (its status file)")
    tx_agent = diode.start("tx", tx)

    async def first_variable() -> tuple[float, bool]:
        """When the mirror first serves plant variable 0, and whether the last one too."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                async with Client(mirror, timeout=5) as c:
                    while time.monotonic() < deadline:
                        if await _has(c, 0):
                            return time.monotonic(), await _has(c, VARIABLES - 1)
                        await asyncio.sleep(0.05)
            except (OSError, TimeoutError, ua.UaError):
                await asyncio.sleep(0.1)
        raise AssertionError("the mirror never served a plant variable")

    seen_at, last_too = asyncio.run(first_variable())
    tx_state = tx_agent.status()["sources"]["opcua:plant"]
    assert tx_state == "crawling" and not last_too, (tx_state, last_too)

    def served(st: dict[str, Any]) -> bool:
        return st["opcua"]["plant"]["models_grown"] == 1
    st = diode.wait_status(rx_agent, served, 60, "the grown model served")["opcua"]["plant"]
    assert st["model_parts"] >= 2 and st["models_installed"] == 1 and st["state"] == "serving"
    assert st["model_parts_ignored"] == 0 and st["model_parts_bad"] == 0
    tx_st = diode.wait_status(tx_agent, lambda s: s["sources"]["opcua:plant"] == "connected",
                              60, "TX connected")["counters"]
    assert tx_st["opcua:plant.model_part_records"] == st["model_parts"] + 1  # + the end part
    print(f"mirror served variable 0 {seen_at - tx_agent.started:.1f} s after TX started, "
          f"{st['model_parts']} parts")

    async def all_present() -> int:
        async with Client(mirror, timeout=10) as c:
            return sum([await _has(c, i) for i in range(0, VARIABLES, 97)] +
                       [await _has(c, VARIABLES - 1)])
    assert asyncio.run(all_present()) == len(range(0, VARIABLES, 97)) + 1

    # TX restarts with its model cached: no parts, the model is kept
    diode.stop(tx_agent)
    tx2 = diode.start("tx", tx, "tx-again")
    tx2_st = diode.wait_status(tx2, lambda s: s["sources"]["opcua:plant"] == "connected",
                               60, "TX connected again")["counters"]
    assert tx2_st["opcua:plant.model_part_records"] == 0
    assert tx2_st["opcua:plant.model_cache_loads"] == 1
    st = diode.wait_status(rx_agent, lambda s: True, 5, "status")["opcua"]["plant"]
    assert (st["models_installed"], st["model_parts"]) == (1, st["model_parts"])
    diode.stop(tx2)
    diode.stop(rx_agent)
