"""The reconnect check (agent/opcua/fingerprint.py) against a real asyncua plant: the
same address space after a restart gives the same fingerprint, so the source keeps its
model; a variable added, or a plant restarted with another configuration, changes it,
so the source crawls again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from asyncua import Client

from agent.opcua.crawl import Crawler, read_limits
from agent.opcua.fingerprint import Probe, fingerprint, probe_of
from agent.opcua.source import OpcuaSource, OpcuaSourceConfig
from agent.opcua.ua import node_id
from diode_tools.sim.mosquitto import free_port
from diode_tools.sim.plant_opcua import PlantProcess

ROOTS = ("i=85",)


async def _fingerprint_of(endpoint: str, probe: Probe | None = None) -> tuple[Probe, str]:
    async with Client(endpoint, timeout=10) as c:
        limits = await read_limits(c.uaclient)
        namespaces = await c.get_namespace_array()
        if probe is None:
            result = await Crawler(c.uaclient, limits).crawl([node_id(85)], namespaces)
            probe = probe_of(result.snapshot)
        return probe, await fingerprint(c.uaclient, limits, namespaces, ROOTS, probe)


def test_same_after_a_restart_different_after_a_change() -> None:
    plant = PlantProcess(free_port(), variables=300, rate=0)
    try:
        probe, first = asyncio.run(_fingerprint_of(plant.endpoint))
        assert asyncio.run(_fingerprint_of(plant.endpoint, probe))[1] == first
        plant.stop()
        plant = plant.restarted()
        assert asyncio.run(_fingerprint_of(plant.endpoint, probe))[1] == first, \
            "an unchanged plant restarted must keep its fingerprint"
        plant.add_variable()  # under Plant/Added: not a root, not in the sample
        assert asyncio.run(_fingerprint_of(plant.endpoint, probe))[1] != first
    finally:
        plant.stop()


def test_source_keeps_its_model_or_crawls_again() -> None:
    port = free_port()
    plant = PlantProcess(port, variables=300, rate=50)

    async def main() -> OpcuaSource:
        src = OpcuaSource(OpcuaSourceConfig("p", plant.endpoint, timeout=3.0))
        await src.start()
        try:
            await _until(lambda: src.state == "connected", 30)
            version = src.version
            await asyncio.to_thread(plant.stop)
            await _until(lambda: src.state != "connected", 10)
            same = await asyncio.to_thread(PlantProcess, port, 300, 50.0)
            await _until(lambda: src.state == "connected", 20)
            assert (src.counters["crawls"], src.counters["model_reuses"]) == (1, 1)
            assert src.version == version
            await asyncio.to_thread(same.stop)
            await _until(lambda: src.state != "connected", 10)
            other = await asyncio.to_thread(PlantProcess, port, 400, 50.0)  # reconfigured
            try:
                await _until(lambda: src.state == "connected", 20)
                assert (src.counters["crawls"], src.counters["model_reuses"]) == (2, 1)
                assert src.version != version and src.counters["variables"] >= 400
            finally:
                await asyncio.to_thread(other.stop)
        finally:
            await src.stop()
        return src

    try:
        asyncio.run(asyncio.wait_for(main(), 120))
    finally:
        plant.stop()


async def _until(pred: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)
