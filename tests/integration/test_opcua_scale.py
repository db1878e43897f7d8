"""A plant of 100,000 variables (node-opcua) through the agents: every variable is in
the mirror with its type and its value, and the link stays UP all along (neither
agent's event loop is held long enough to make a heartbeat late: agent/loop_watch.py).
Completeness, not speed: `diode bench opcua` measures the time."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua

from diode_tools.sim.node_opcua import BigPlant
from tests.integration.conftest import Diode
from tests.integration.test_opcua_plant_budget import _start

VARIABLES = 100_000
READ_CHUNK = 1_000


async def _mirrored(mirror: str) -> dict[str, tuple[Any, Any]]:
    """Every variable under Objects/Plant/Area*: browse name -> (DataType, Value)."""
    # asyncua's client gives up on a server whose status read takes over its watchdog
    # interval (1 s): RX is busy for a while after a sync of this size
    async with Client(mirror, timeout=60, watchdog_intervall=30) as c:
        ns = await c.get_namespace_index("urn:diode:node-bigplant")
        plant = c.get_node(f"ns={ns};s=Plant")
        nodes = [v for area in await plant.get_children() for v in await area.get_children()]
        out: dict[str, tuple[Any, Any]] = {}
        for i in range(0, len(nodes), READ_CHUNK):
            chunk = nodes[i:i + READ_CHUNK]
            params = ua.ReadParameters()
            for n in chunk:
                for attr in (ua.AttributeIds.BrowseName, ua.AttributeIds.DataType,
                             ua.AttributeIds.Value):
                    params.NodesToRead.append(ua.ReadValueId(NodeId=n.nodeid, AttributeId=attr))
            res = await c.uaclient.read(params)
            for j in range(0, len(res), 3):
                name, dtype, value = res[j:j + 3]
                out[name.Value.Value.Name] = (dtype.Value.Value, value)
        return out


@pytest.mark.slow
def test_every_one_of_100000_variables_is_mirrored_with_its_type_and_value(
        diode: Diode, tmp_path: Path) -> None:
    (tmp_path / "plant").mkdir()
    plant = BigPlant(VARIABLES, 0, tmp_path / "plant")  # rate 0: variable i holds i
    try:
        tx, rx, mirror = _start(diode, plant.endpoint)
        diode.wait_status(
            rx, lambda s: s["opcua"]["plant"]["values_applied"] >= VARIABLES, 1200,
            f"RX applied a first value to each of the {VARIABLES} variables")
        # values turn Good once the source's "connected" comes in the next heartbeat
        deadline = time.monotonic() + 120
        while True:
            got = asyncio.run(_mirrored(mirror))
            if time.monotonic() > deadline or all(
                    v[1].StatusCode.is_good() for v in got.values()):
                break
            time.sleep(5)
        tx_status, rx_status = tx.status(), rx.status()
    finally:
        plant.close()
    assert len(got) == VARIABLES
    wrong = {name: v for name, v in got.items()
             if v[0] != ua.NodeId(ua.ObjectIds.Double) or not v[1].StatusCode.is_good()
             or v[1].Value.Value != float(int(name[1:]))}
    assert not wrong, f"{len(wrong)} variables wrong, e.g. {list(wrong.items())[:3]}"
    assert sorted(got) == [f"V{i:05d}" for i in range(VARIABLES)]
    assert tx_status is not None and rx_status is not None
    assert tx_status["counters"]["opcua:plant.variables"] == VARIABLES
    # heartbeats every 0.25 s here, DOWN after 0.75 s without one: no TX stall came near
    assert "-> DOWN" not in rx.log(), [line for line in rx.log().splitlines() if "DOWN" in line]
    print(f"\nTX event loop: {tx_status['counters']['loop_stalls']} stalls of 0.5 s or more, "
          f"the longest {tx_status['counters']['loop_stall_max_ms']} ms; RX: "
          f"{rx_status['counters']['loop_stalls']}, {rx_status['counters']['loop_stall_max_ms']} ms")
