"""IT subscriptions across changes of the plant's NamespaceArray, through the agents as
processes: an asyncua plant -> diode tx -> UDP -> diode rx -> mirror -> an IT client
(asyncua's, and node-opcua's).

An appended namespace changes no node id, so the monitored items on the plant's nodes
keep flowing, with no BadNodeIdUnknown. An inserted one moves only the namespaces after
it: their nodes have new ids (the old ids are gone, or name another namespace's nodes
now), and every other node keeps flowing. TX re-crawls every second here (the plant
sends no model change events)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua

from agent.opcua.mirror import DIAG_NAMESPACE
from diode_tools.sim.mosquitto import free_port
from diode_tools.sim.node_opcua import BigPlant, node_client
from diode_tools.sim.plant_opcua import EXTRA, PlantProcess
from tests.integration.conftest import Agent, Diode

PLANT_NODES = ("ns=2;s=Special.Int32", "ns=2;s=Special.String", "ns=2;s=Area000.V00003")
APPENDED = "urn:diode:plant:appended"
INSERTED = "urn:diode:plant:inserted"
WAIT = 40.0  # seconds; a loaded two-core machine runs the plant, both agents and the test
# What a monitored item sees when its node was deleted, or deleted and made again. Not
# the link's quality (Uncertain, BadNoCommunication): a loaded machine may delay
# heartbeats enough for that, and it says nothing about the node.
LOST = ("BadNodeIdUnknown", "BadWaitingForInitialData")


@pytest.fixture
def plant() -> Iterator[PlantProcess]:
    p = PlantProcess(free_port(), variables=50, rate=100)
    try:
        yield p
    finally:
        p.stop()


def _start(diode: Diode, plant_endpoint: str, **source: Any) -> tuple[Agent, str]:
    """RX and TX; TX re-crawls every second unless `source` says otherwise."""
    port = free_port()
    tx, rx = diode.tx_doc(), diode.rx_doc()
    del tx["mqtt"], rx["mqtt"]  # OPC UA only
    tx["opcua"] = [{"name": "plant", "endpoint": plant_endpoint, "rebrowse_period": 1.0,
                    "model_carousel_period": 3, "value_keyframe_period": 3, **source}]
    endpoint = f"opc.tcp://127.0.0.1:{port}/diode/"
    rx["opcua"] = [{"name": "plant", "endpoint": endpoint}]
    agent = diode.start("rx", rx)
    diode.start("tx", tx)
    diode.wait_status(agent, lambda s: s.get("opcua", {}).get("plant", {}).get("state")
                      == "serving", WAIT, "mirror serving")
    return agent, endpoint


def _installed(rx: Agent) -> int:
    st = rx.status() or {}
    return int(st.get("opcua", {}).get("plant", {}).get("models_installed", 0))


class Seen:
    """Every data change of an IT client's monitored items: node id -> [(when, DataValue)]."""

    def __init__(self) -> None:
        self.by_node: defaultdict[str, list[tuple[float, ua.DataValue]]] = defaultdict(list)

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.by_node[node.nodeid.to_string()].append((time.monotonic(),
                                                      data.monitored_item.Value))

    def good_since(self, nid: str, since: float) -> int:
        return sum(1 for at, dv in self.by_node[nid] if at > since and dv.StatusCode.is_good())

    def lost(self, nid: str) -> list[str]:
        return [dv.StatusCode.name for _, dv in self.by_node[nid] if dv.StatusCode.name in LOST]


async def _until(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = await pred()
        except (OSError, TimeoutError, ua.UaError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.2)


async def _good_value(c: Client, nid: str) -> Any:
    dv = await c.get_node(nid).read_data_value(raise_on_bad_status=False)
    return dv.Value.Value if dv.StatusCode.is_good() else None


async def _connect(endpoint: str) -> Client:
    async def attempt() -> Client | None:
        c = Client(endpoint, timeout=5)
        await c.connect()
        if all([await _good_value(c, n) is not None for n in PLANT_NODES]):
            return c
        await c.disconnect()
        return None
    client: Client = await _until(attempt, WAIT, f"Good values of {PLANT_NODES} on the mirror")
    return client


async def _served_after(c: Client, rx: Agent, plant_ns: list[str], before: int) -> float:
    """When the mirror serves the plant's new NamespaceArray and installed its new model."""
    async def served() -> bool:
        ns = await c.get_namespace_array()
        return ns[:len(plant_ns)] == plant_ns and _installed(rx) > before
    await _until(served, WAIT, f"the mirror serving the namespaces {plant_ns}")
    return time.monotonic()


async def _subscribe(c: Client, nodes: tuple[str, ...]) -> Seen:
    seen = Seen()
    sub = await c.create_subscription(100, seen)
    await sub.subscribe_data_change([c.get_node(n) for n in nodes])

    async def flowing() -> bool:
        return all(seen.good_since(n, 0) for n in nodes)
    await _until(flowing, WAIT, f"first values of {nodes}")
    return seen


async def _keep_flowing(seen: Seen, nodes: tuple[str, ...], since: float) -> None:
    """Three Good values more of each node after `since`, and never a sign of the node
    being deleted."""
    async def flowing() -> bool:
        return all(seen.good_since(n, since) >= 3 for n in nodes)
    with_values = True
    try:
        await _until(flowing, 15, "new values after the change")
    except AssertionError:
        with_values = False
    assert {n: seen.lost(n) for n in nodes} == {n: [] for n in nodes}
    assert with_values, {n: seen.good_since(n, since) for n in nodes}


def test_an_appended_namespace_and_added_nodes_change_no_subscription(
        diode: Diode, plant: PlantProcess) -> None:
    rx, endpoint = _start(diode, plant.endpoint)

    async def main() -> None:
        c = await _connect(endpoint)
        try:
            seen = await _subscribe(c, PLANT_NODES)
            before = _installed(rx)
            plant_ns = await asyncio.to_thread(plant.append_namespace, APPENDED)
            at = await _served_after(c, rx, plant_ns, before)
            assert await c.get_namespace_array() == [*plant_ns, DIAG_NAMESPACE]
            extra = f"ns={plant_ns.index(APPENDED)};s={EXTRA}"
            value = await _until(lambda: _good_value(c, extra), WAIT, f"{extra} on the mirror")
            assert value.startswith(f"{APPENDED} ")
            # The diagnostics made room for the appended namespace: at the new last index.
            diag = c.get_node(f"ns={len(plant_ns)};s=DiodeDiagnostics.ModelVersion")
            assert await diag.read_value()
            await _keep_flowing(seen, PLANT_NODES, at)

            # A node added and removed (same namespaces): the others still flow.
            added = (await asyncio.to_thread(plant.add_variable)).split()[0]
            await _until(lambda: _good_value(c, added), WAIT, f"{added} on the mirror")
            await asyncio.to_thread(plant.remove_last_added)

            async def gone() -> bool:
                dv = (await c.read_attributes([c.get_node(added)], ua.AttributeIds.NodeClass))[0]
                return dv.StatusCode.value == ua.StatusCodes.BadNodeIdUnknown
            await _until(gone, WAIT, f"{added} gone from the mirror")
            await _keep_flowing(seen, PLANT_NODES, time.monotonic())
        finally:
            await c.disconnect()

    asyncio.run(main())


def test_an_inserted_namespace_moves_only_the_nodes_after_it(diode: Diode,
                                                              plant: PlantProcess) -> None:
    rx, endpoint = _start(diode, plant.endpoint)

    async def main() -> None:
        c = await _connect(endpoint)
        try:
            before = _installed(rx)
            plant_ns = await asyncio.to_thread(plant.append_namespace, APPENDED)
            await _served_after(c, rx, plant_ns, before)
            old = f"ns={plant_ns.index(APPENDED)};s={EXTRA}"
            await _until(lambda: _good_value(c, old), WAIT, f"{old} on the mirror")
            seen = await _subscribe(c, (*PLANT_NODES, old))

            before = _installed(rx)
            plant_ns = await asyncio.to_thread(plant.insert_namespace, INSERTED, APPENDED)
            at = await _served_after(c, rx, plant_ns, before)
            assert await c.get_namespace_array() == [*plant_ns, DIAG_NAMESPACE]
            moved = f"ns={plant_ns.index(APPENDED)};s={EXTRA}"
            assert old == f"ns={plant_ns.index(INSERTED)};s={EXTRA}"  # the string names another node
            await _keep_flowing(seen, PLANT_NODES, at)
            # The node the item watched moved to a new id: its item is told so.
            assert "BadNodeIdUnknown" in seen.lost(old)

            async def from_(nid: str, uri: str) -> bool:
                value = await _good_value(c, nid)
                return isinstance(value, str) and value.startswith(f"{uri} ")
            await _until(lambda: from_(moved, APPENDED), WAIT, f"{moved}: {APPENDED}'s values")
            await _until(lambda: from_(old, INSERTED), WAIT, f"{old}: {INSERTED}'s values")
            name = await c.get_node(old).read_browse_name()
            assert name.NamespaceIndex == plant_ns.index(INSERTED)
            fresh = await _subscribe(c, (moved,))
            await _keep_flowing(fresh, (moved,), time.monotonic())
            assert all(dv.Value.Value.startswith(f"{APPENDED} ")
                       for _, dv in fresh.by_node[moved])
        finally:
            await c.disconnect()

    asyncio.run(main())


def _ticks_now() -> int:
    return ua.datetime_to_win_epoch(datetime.now(UTC))


def test_node_opcua_client_subscribed_across_an_appended_namespace(
        diode: Diode, plant: PlantProcess) -> None:
    """An IT client that is not asyncua: node-opcua's, one subscription held throughout."""
    rx, endpoint = _start(diode, plant.endpoint)
    result: list[Any] = []

    def hold() -> None:
        try:
            result.extend(node_client(endpoint, [
                {"op": "subscribe", "nodeIds": list(PLANT_NODES), "seconds": 20}], timeout=90))
        except Exception as exc:  # reported by the test's thread below
            result.append(exc)
    held = threading.Thread(target=hold)

    async def change() -> tuple[int, int]:
        c = await _connect(endpoint)
        try:
            held.start()
            await asyncio.sleep(6)  # node-opcua started and subscribed (checked below)
            started = _ticks_now()
            before = _installed(rx)
            plant_ns = await asyncio.to_thread(plant.append_namespace, APPENDED)
            await _served_after(c, rx, plant_ns, before)
            return started, _ticks_now()
        finally:
            await c.disconnect()
    started, at = asyncio.run(change())
    held.join(100)
    assert result and not isinstance(result[0], Exception), result
    items = {r["nodeId"]: r for r in result[0]}
    for nid in PLANT_NODES:
        statuses = [v["status"] for v in items[nid]["values"]]
        assert items[nid]["status"] == "Good", (nid, items[nid]["status"])
        assert not set(statuses) & set(LOST), (nid, statuses)
        assert items[nid]["values"][0]["sourceTicks"] < started, nid  # held across the change
        later = [v for v in items[nid]["values"] if v["sourceTicks"] > at and v["status"] == "Good"]
        assert len(later) >= 3, (nid, len(items[nid]["values"]), len(later))


def test_a_node_opcua_plant_appending_a_namespace_keeps_every_subscription(
        diode: Diode, tmp_path: Path) -> None:
    # an independent plant; no re-crawl scheduled: TX's change watch sees the new array
    (tmp_path / "plant").mkdir()
    plant = BigPlant(200, 200.0, tmp_path / "plant")
    nodes = ("ns=2;s=Plant.V00000", "ns=2;s=Plant.V00001", "ns=2;s=Plant.V00199")
    try:
        _, endpoint = _start(diode, plant.endpoint, rebrowse_period=600.0)

        async def main() -> None:
            async with Client(endpoint, timeout=5) as c:
                await _until(lambda: _good_value(c, nodes[-1]), WAIT, "values on the mirror")
                seen = await _subscribe(c, nodes)
                extra = await asyncio.to_thread(plant.append_namespace)
                await _until(lambda: _good_value(c, extra), WAIT, f"{extra} on the mirror")
                array = await c.get_namespace_array()
                assert array[2:4] == ["urn:diode:node-bigplant",
                                      "urn:diode:node-bigplant:extra1"], array
                await _keep_flowing(seen, nodes, time.monotonic())
        asyncio.run(main())
        # node-opcua's client, subscribed afterwards, gets values from the same node ids
        got = node_client(endpoint, [{"op": "subscribe", "nodeIds": list(nodes), "seconds": 3}])
        assert all(item["status"] == "Good" and item["values"] for item in got[0]), got
    finally:
        plant.close()
