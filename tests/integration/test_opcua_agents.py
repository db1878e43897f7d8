"""OPC UA through the real agent processes: plant server -> diode tx -> UDP -> diode rx
-> read-only mirror, browsed by an ordinary asyncua client, in either start order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from asyncua import Client, Node, ua

from agent.spool import write_spool_key
from diode_tools.sim.mosquitto import free_port
from diode_tools.sim.node_opcua import node_client
from diode_tools.sim.plant_opcua import PlantProcess
from tests.integration.conftest import Agent, Diode, to_toml


@pytest.fixture
def plant() -> Iterator[PlantProcess]:
    p = PlantProcess(free_port(), variables=200, rate=200)
    try:
        yield p
    finally:
        p.stop()


def _docs(diode: Diode, plant: PlantProcess, mirror_port: int) -> tuple[dict, dict]:
    tx = diode.tx_doc()
    rx = diode.rx_doc()
    del tx["mqtt"], rx["mqtt"]  # OPC UA only
    tx["opcua"] = [{"name": "plant", "endpoint": plant.endpoint, "rebrowse_period": 5,
                    "model_carousel_period": 3, "value_keyframe_period": 3}]
    rx["opcua"] = [{"name": "plant", "endpoint": f"opc.tcp://127.0.0.1:{mirror_port}/diode/",
                    "bad_after": 3.0}]
    return tx, rx


async def _variables(node: Node, depth: int, out: dict[str, object], limit: int) -> None:
    for child in await node.get_children():
        if len(out) >= limit:
            return
        if child.nodeid.NamespaceIndex == 0:
            continue
        if await child.read_node_class() == ua.NodeClass.Variable:
            out[child.nodeid.to_string()] = (
                (await child.read_browse_name()).to_string(),
                (await child.read_data_type()).to_string(),
                await child.read_value_rank())
        elif depth > 0:
            await _variables(child, depth - 1, out, limit)


async def _read_mirror(endpoint: str, timeout: float) -> dict[str, object]:
    """Node id -> (browse name, data type, value rank) of the first 20 non-standard
    variables, and the namespace array."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with Client(endpoint, timeout=5) as c:
                found: dict[str, object] = {}
                await _variables(c.nodes.objects, 4, found, 20)
                if len(found) >= 20:
                    found["__ns__"] = await c.get_namespace_array()
                    return found
        except (OSError, TimeoutError, ua.UaError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"mirror at {endpoint} not browsable within {timeout} s")
        await asyncio.sleep(0.5)


async def _write_refused(endpoint: str, node_id: str, user: str | None) -> None:
    url = endpoint if user is None else endpoint.replace("opc.tcp://", f"opc.tcp://{user}:secret@")
    async with Client(url, timeout=5) as c:
        node = c.get_node(node_id)
        value = await node.read_data_value()
        with pytest.raises(ua.UaStatusCodeError):
            await node.write_value(value.Value)


async def _node_management_refused(endpoint: str) -> None:
    async with Client(endpoint.replace("opc.tcp://", "opc.tcp://admin:secret@"), timeout=5) as c:
        with pytest.raises(ua.UaStatusCodeError):
            await c.nodes.objects.add_variable("ns=2;s=Intruder", "Intruder", 1.0)
        victim = (await c.nodes.objects.get_children())[-1]
        with pytest.raises(ua.UaStatusCodeError):
            await c.delete_nodes([victim])


@pytest.mark.parametrize("order", ["tx-first", "rx-first"])
def test_mirror_served_by_the_agents(diode: Diode, plant: PlantProcess, order: str) -> None:
    port = free_port()
    tx_doc, rx_doc = _docs(diode, plant, port)
    # A user named "admin" with its password: it must get no more than anyone else.
    rx_conf = diode.write("rx.toml", to_toml(rx_doc) + 'users = { admin = "secret" }\n')
    agents: list[Agent] = []
    for role in (("tx", "rx") if order == "tx-first" else ("rx", "tx")):
        agents.append(diode.start(role, tx_doc if role == "tx" else rx_conf))
        time.sleep(2.0)
    endpoint = f"opc.tcp://127.0.0.1:{port}/diode/"
    mirror = asyncio.run(_read_mirror(endpoint, 45))
    source = asyncio.run(_read_mirror(plant.endpoint, 10))
    shared = [k for k in source if k != "__ns__" and k in mirror]
    assert len(shared) >= 5, (sorted(source)[:5], sorted(mirror)[:5])
    assert mirror["__ns__"][:len(source["__ns__"])] == source["__ns__"]  # type: ignore[index]
    for k in shared:  # same browse name, data type and value rank under the same node id
        assert mirror[k] == source[k], k
    for user in (None, "admin"):
        asyncio.run(_write_refused(endpoint, shared[0], user))
    asyncio.run(_node_management_refused(endpoint))
    rx = next(a for a in agents if a.role == "rx")
    # TX's state reaches RX with its next heartbeat, and RX's status file a second later
    diode.wait_status(rx, lambda s: s.get("opcua", {}).get("plant", {}).get("state")
                      == "serving" and s["tx"]["sources"].get("opcua:plant") == "connected",
                      10, "mirror serving, TX's source connected")


def test_first_model_reaches_a_mirror_started_with_tx(diode: Diode, plant: PlantProcess
                                                      ) -> None:
    """TX and RX started together (a demo, a site power-up): TX sends its first model
    while RX's mirror is still starting. RX listens on the link before that, so the
    mirror serves from the live model, not a carousel copy a period later."""
    port = free_port()
    tx_doc, rx_doc = _docs(diode, plant, port)
    tx_doc["opcua"][0].update(model_carousel_period=120, value_keyframe_period=120)
    rx = diode.start("rx", rx_doc)
    diode.start("tx", tx_doc)
    st = diode.wait_status(rx, lambda s: s.get("opcua", {}).get("plant", {}).get("state")
                           == "serving", 30, "mirror serving from the first, live model")
    assert st["opcua"]["plant"]["models_installed"] == 1
    assert st["tx"]["counters"]["opcua:plant.carousel_records"] == 0


async def _status_of(endpoint: str, node_id: str) -> ua.StatusCode:
    async with Client(endpoint, timeout=5) as c:
        dv = await c.get_node(node_id).read_data_value(raise_on_bad_status=False)
        return dv.StatusCode


def _wait_status(endpoint: str, node_id: str, want: str, timeout: float) -> float:
    """Seconds until the value's status code name starts with `want`."""
    start = time.monotonic()
    while True:
        code = asyncio.run(_status_of(endpoint, node_id))
        if code.name.startswith(want):
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{node_id} still {code.name} after {timeout} s, not {want}")
        time.sleep(0.3)


@pytest.mark.slow
def test_link_cut_quality_and_rx_restart(diode: Diode, plant: PlantProcess) -> None:
    port = free_port()
    tx_doc, rx_doc = _docs(diode, plant, port)
    rx_doc["link"]["timeout"] = 1.0
    rx = diode.start("rx", rx_doc)
    tx = diode.start("tx", tx_doc)
    endpoint = f"opc.tcp://127.0.0.1:{port}/diode/"
    mirror = asyncio.run(_read_mirror(endpoint, 45))
    source = asyncio.run(_read_mirror(plant.endpoint, 10))
    node = next(k for k in mirror if k != "__ns__" and k in source)
    _wait_status(endpoint, node, "Good", 10)

    diode.kill(tx)  # link cut: nothing arrives any more
    to_uncertain = _wait_status(endpoint, node, "Uncertain", 10)
    to_bad = _wait_status(endpoint, node, "BadNoCommunication", 10)
    assert to_bad > 1.5, "Bad only after bad_after (3 s) of Uncertain"
    diode.start("tx", tx.config, "tx-back")
    _wait_status(endpoint, node, "Good", 20)
    print(f"link cut: Uncertain after {to_uncertain:.1f} s, Bad {to_bad:.1f} s later")

    diode.stop(rx)  # RX restart: an empty mirror converges from TX's carousel alone
    t0 = time.monotonic()
    diode.start("rx", rx.config, "rx-back")
    again = asyncio.run(_read_mirror(endpoint, 30))
    took = time.monotonic() - t0
    assert node in again
    _wait_status(endpoint, node, "Good", 10)
    print(f"RX restart: mirror browsable again after {took:.1f} s (carousel 3 s)")


@pytest.mark.slow
def test_two_sources_two_mirrors_and_an_added_node(diode: Diode, plant: PlantProcess) -> None:
    """Several OPC UA sources per TX, each on its own mirror endpoint; a node added on a
    source appears on its mirror after one re-browse (rebrowse_period 5 s)."""
    second = PlantProcess(free_port(), variables=100, rate=100)
    try:
        ports = free_port(), free_port()
        tx_doc, rx_doc = _docs(diode, plant, ports[0])
        tx_doc["opcua"].append({**tx_doc["opcua"][0], "name": "line2",
                                "endpoint": second.endpoint})
        rx_doc["opcua"].append({**rx_doc["opcua"][0], "name": "line2",
                                "endpoint": f"opc.tcp://127.0.0.1:{ports[1]}/diode/"})
        rx = diode.start("rx", rx_doc)
        diode.start("tx", tx_doc)
        endpoints = [f"opc.tcp://127.0.0.1:{p}/diode/" for p in ports]
        first = asyncio.run(_read_mirror(endpoints[0], 45))
        other = asyncio.run(_read_mirror(endpoints[1], 45))
        assert set(first) & set(asyncio.run(_read_mirror(plant.endpoint, 10))) - {"__ns__"}
        assert set(other) & set(asyncio.run(_read_mirror(second.endpoint, 10))) - {"__ns__"}
        st = diode.wait_status(rx, lambda s: all(
            s.get("opcua", {}).get(n, {}).get("state") == "serving" for n in ("plant", "line2")),
            20, "both mirrors serving")
        assert set(st["tx"]["sources"]) == {"opcua:plant", "opcua:line2"}

        added = second.add_variable()  # e.g. "ns=2;s=..." printed by the simulator
        node_id = added.split()[0]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                code = asyncio.run(_status_of(endpoints[1], node_id))
                if code.is_good():
                    break
            except ua.UaError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError(f"{node_id} did not appear on the mirror within 20 s")
    finally:
        second.stop()


@pytest.mark.slow
def test_rx_agent_keeps_history_under_its_spool_across_a_restart(diode: Diode,
                                                                 plant: PlantProcess) -> None:
    """The history as an RX agent keeps it: under `[spool] dir`/<name>.opcua-history,
    read by an independent client (node-opcua), and still there after RX restarts."""
    port = free_port()
    tx_doc, rx_doc = _docs(diode, plant, port)
    key = diode.tmp / "spool.key"
    write_spool_key(key)
    rx_doc["spool"] = {"dir": str(diode.tmp / "spool-rx"), "key_file": str(key)}
    rx_doc["opcua"][0]["history_nodes"] = ["ns=2;s=Special.Int32"]
    start = datetime.now(UTC)
    rx = diode.start("rx", rx_doc)
    diode.start("tx", tx_doc)
    endpoint = f"opc.tcp://127.0.0.1:{port}/diode/"
    diode.wait_status(rx, lambda s: s.get("opcua", {}).get("plant", {}).get("state")
                      == "serving", 45, "mirror serving")
    time.sleep(3.0)
    end = datetime.now(UTC)
    time.sleep(1.0)  # values stamped before `end` still crossing
    ops = [{"op": "history", "nodeId": "ns=2;s=Special.Int32", "start": start.isoformat(),
            "end": end.isoformat(), "follow": True},
           {"op": "history", "nodeId": "ns=2;s=Special.UInt16", "start": start.isoformat(),
            "end": end.isoformat()}]
    first, other = node_client(endpoint, ops)
    values = [v["value"] for v in first["values"]]
    assert first["status"] == "Good" and len(values) >= 10 and values == sorted(values), first
    assert other["status"] == "BadHistoryOperationUnsupported"
    assert (diode.tmp / "spool-rx" / "plant.opcua-history" / "history.sqlite").is_file()

    diode.stop(rx)
    rx = diode.start("rx", rx.config, "rx-back")
    diode.wait_status(rx, lambda s: s.get("opcua", {}).get("plant", {}).get("state")
                      == "serving", 45, "mirror serving again")
    again, _ = node_client(endpoint, ops)
    assert [v["value"] for v in again["values"]] == values  # the same, from the disk
