"""Events and alarms through the real agent processes, for two plant stacks, seen by two
IT client stacks.

```
plant: asyncua (--events) | node-opcua (scripts/node-opcua/events_plant.mjs)
   ─► diode tx ─► UDP ─► diode rx ─► mirror ◄─ asyncua client  (this process)
                                            ◄─ node-opcua client (scripts/node-opcua/client.mjs)
```

- An IT client's event subscription on the mirror's notifier gets the plant's events
  with the same EventType, Message, Severity, SourceName and the custom type's fields.
- An alarm going active shows ActiveState/Id, Severity, Message and its ConditionId;
  Acknowledge and Confirm are refused per item; ConditionRefresh re-sends a retained one.
- EventNotifier is SubscribeToEvents on the notifiers carried and 0 elsewhere, where an
  event subscription is refused.

node-opcua must be installed (`scripts/setup.sh`): without it these fail, never skip.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from asyncua import Client, Node, ua

from diode_tools.sim.mosquitto import free_port
from diode_tools.sim.node_opcua import NodeOpcuaPlant, node_client
from diode_tools.sim.plant_opcua import PlantProcess
from tests.integration.conftest import Diode

pytestmark = pytest.mark.timeout(180)

A = ua.AttributeIds
ACK = ua.ObjectIds.AcknowledgeableConditionType_Acknowledge
CONFIRM = ua.ObjectIds.AcknowledgeableConditionType_Confirm


@pytest.fixture(scope="module")
def asyncua_plant() -> Iterator[PlantProcess]:
    p = PlantProcess(free_port(), variables=20, rate=20, events=0.5)
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="module")
def node_plant() -> Iterator[NodeOpcuaPlant]:
    with NodeOpcuaPlant(script="events_plant.mjs", args=("500",)) as p:
        yield p


def start_agents(diode: Diode, endpoint: str, **src: Any) -> str:
    """Both agents, OPC UA only; returns the mirror's endpoint."""
    url = f"opc.tcp://127.0.0.1:{free_port()}/diode/"
    link = {"key_file": str(diode.key), "host": "127.0.0.1", "port": diode.udp_port}
    diode.start("rx", {"link": link, "opcua": [{"name": "plant", "endpoint": url}]})
    diode.start("tx", {"link": {**link, "heartbeat_interval": 0.25},
                       "opcua": [{"name": "plant", "endpoint": endpoint,
                                  "model_carousel_period": 3, **src}]})
    return url


@asynccontextmanager
async def mirror(url: str, notifier: str, bits: int = 1, timeout: float = 60
                 ) -> AsyncIterator[Client]:
    """A client of the mirror, once `notifier`'s EventNotifier is `bits` (1: its events
    are carried)."""
    deadline = time.monotonic() + timeout
    while True:
        client = Client(url)
        try:
            await client.connect()
        except (TimeoutError, OSError, ua.UaError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
            continue
        try:
            while await notifier_bits(client, notifier) != bits:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{notifier} never became a notifier on the mirror")
                await asyncio.sleep(0.3)
            yield client
            return
        finally:
            await client.disconnect()


async def notifier_bits(client: Client, nid: str) -> int | None:
    """None also while the mirror has not got the node yet."""
    try:
        dv = await client.get_node(nid).read_attribute(A.EventNotifier)
    except ua.uaerrors.BadNodeIdUnknown:
        return None
    return dv.Value.Value if dv.Value is not None else None


class Events:
    def __init__(self) -> None:
        self.got: list[Any] = []

    def event_notification(self, event: Any) -> None:
        self.got.append(event)


async def subscribe(client: Client, nid: str, types: list[Any]) -> tuple[Any, Events]:
    handler = Events()
    sub = await client.create_subscription(100, handler)
    await sub.subscribe_events(client.get_node(nid), types)
    return sub, handler


async def event_type(client: Client, name: str) -> Node:
    return await client.nodes.base_event_type.get_child([f"2:{name}"])


def fields(ev: Any, *names: str) -> tuple[Any, ...]:
    """Comparable: node ids as strings, localized texts as their text."""
    out = []
    for n in names:
        v = getattr(ev, n, None)
        out.append(v.to_string() if isinstance(v, ua.NodeId)
                   else v.Text if isinstance(v, ua.LocalizedText) else v)
    return tuple(out)


async def node(url: str, ops: list[dict[str, Any]]) -> list[Any]:
    return await asyncio.to_thread(node_client, url, ops)


# -- asyncua plant --------------------------------------------------------------------


def test_asyncua_plant_events_reach_both_clients(diode: Diode,
                                                 asyncua_plant: PlantProcess) -> None:
    url = start_agents(diode, asyncua_plant.endpoint)
    boiler, quiet = "ns=2;s=Boiler", "ns=2;s=Quiet"

    async def main() -> None:
        async with mirror(url, boiler) as mc, Client(asyncua_plant.endpoint) as pc:
            # What the notifiers claim is what is carried.
            assert await notifier_bits(mc, quiet) == 0
            assert await notifier_bits(mc, "ns=2;s=Plant") == 0
            assert await notifier_bits(mc, "i=2253") == 1  # TX carries the Server's events
            with pytest.raises(ua.UaStatusCodeError) as exc:
                await subscribe(mc, quiet, [])
            assert exc.value.code == ua.StatusCodes.BadServiceUnsupported

            names = ("EventType", "Message", "Severity", "SourceName", "Temperature", "Batch")
            types_m = [await event_type(mc, "BoilerEventType"),
                       mc.get_node(ua.ObjectIds.AlarmConditionType)]
            types_p = [await event_type(pc, "BoilerEventType"),
                       pc.get_node(ua.ObjectIds.AlarmConditionType)]
            _, on_mirror = await subscribe(mc, boiler, types_m)
            _, on_plant = await subscribe(pc, boiler, types_p)
            await asyncio.sleep(4.0)
            plant_seen = {fields(e, *names) for e in on_plant.got}
            mirror_seen = [fields(e, *names) for e in on_mirror.got]
            boiler_events = [f for f in mirror_seen if f[4] is not None]
            assert len(boiler_events) >= 3, mirror_seen
            for f in boiler_events:
                assert f[0] == types_m[0].nodeid.to_string() and f[2] == 300, f
                assert f[3] == "Boiler" and f[1] == f"boiler event {int(f[4]) - 80}"
                assert f[5] == f"batch-{int(f[4]) - 80}"
            # Every event the mirror gave while the plant client listened too is the
            # plant's, field for field (the mirror's subscription started first).
            common = [f for f in mirror_seen if f in plant_seen]
            assert len(common) >= len(mirror_seen) - 4 and len(common) >= 4, \
                (mirror_seen, plant_seen)
            alarms = [e for e in on_mirror.got
                      if e.EventType == ua.NodeId(ua.ObjectIds.AlarmConditionType)]
            assert {getattr(e, "ActiveState/Id") for e in alarms} == {True, False}
            for e in alarms:
                active = getattr(e, "ActiveState/Id")
                assert e.Severity == (700 if active else 100) and e.Retain is active
                assert e.NodeId == ua.NodeId.from_string("ns=2;s=Boiler.HighTemperature")

            r = await node(url, [
                {"op": "events", "nodeId": boiler, "seconds": 2,
                 "fields": ["EventType", "Message", "Severity", "SourceName", "2:Temperature",
                            "ActiveState.Id", "ConditionId"]},
                {"op": "events", "nodeId": quiet, "fields": ["EventType"], "seconds": 0.5},
                {"op": "read", "nodeId": quiet, "attribute": "EventNotifier"},
                {"op": "read", "nodeId": boiler, "attribute": "EventNotifier"},
            ])
            evs = r[0]["events"]
            custom = [e for e in evs if e["2:Temperature"] is not None]
            assert custom and all(e["Message"] == f"boiler event {int(e['2:Temperature']) - 80}"
                                  and e["EventType"] == types_m[0].nodeid.to_string()
                                  and e["SourceName"] == "Boiler" for e in custom), evs
            assert {e["ActiveState.Id"] for e in evs if e["EventType"] == "ns=0;i=2915"} \
                <= {True, False}
            assert r[1]["status"].startswith("BadServiceUnsupported"), r[1]
            assert (r[2]["value"], r[3]["value"]) == (0, 1)
    asyncio.run(asyncio.wait_for(main(), 120))


# -- node-opcua plant with an alarm -----------------------------------------------------


def test_node_opcua_alarm_mirrored_read_only(diode: Diode, node_plant: NodeOpcuaPlant) -> None:
    url = start_agents(diode, node_plant.endpoint, subtrees=["ns=2;s=Plant"])
    tank, quiet, alarm = "ns=2;s=Plant.Tank", "ns=2;s=Plant.Quiet", "ns=2;s=Plant.Tank.HighLevel"

    async def main() -> None:
        async with mirror(url, tank) as mc:
            assert await notifier_bits(mc, quiet) == 0
            assert await notifier_bits(mc, "ns=2;s=Plant") == 0
            # node-opcua client: the alarm going active and back, as the plant raises it
            r = await node(url, [
                {"op": "events", "nodeId": tank, "seconds": 2.5, "fields": [
                    "EventType", "Message", "Severity", "SourceName", "ActiveState.Id",
                    "ConditionId", "Retain", "2:Level"]},
                {"op": "call", "items": [{"objectId": alarm, "methodId": f"i={ACK}"},
                                         {"objectId": alarm, "methodId": f"i={CONFIRM}"}]},
                {"op": "events", "nodeId": quiet, "fields": ["EventType"], "seconds": 0.5},
            ])
            alarms = [e for e in r[0]["events"] if e["EventType"] == "ns=0;i=2915"]
            active = [e for e in alarms if e["ActiveState.Id"] is True]
            assert active and all(e["Severity"] == 800 and e["Retain"] is True
                                  and e["Message"].startswith("level high ")
                                  and e["ConditionId"] == alarm for e in active), alarms
            assert any(e["ActiveState.Id"] is False and e["Severity"] == 100 for e in alarms)
            tank_events = [e for e in r[0]["events"] if e["2:Level"] is not None]
            assert tank_events and all(e["Message"] == f"tank event {int(e['2:Level'])}"
                                       and e["SourceName"] == "Tank" for e in tank_events)
            assert r[1] == ["BadUserAccessDenied", "BadUserAccessDenied"]
            assert r[2]["status"].startswith("BadServiceUnsupported"), r[2]

            # asyncua client: the same, and ConditionRefresh re-sends the retained alarm
            sub, got = await subscribe(mc, tank, [mc.get_node(ua.ObjectIds.AlarmConditionType)])
            deadline = time.monotonic() + 10
            while not any(getattr(e, "ActiveState/Id", None) for e in got.got):
                assert time.monotonic() < deadline, got.got
                await asyncio.sleep(0.1)
            ev = next(e for e in got.got if getattr(e, "ActiveState/Id", None))
            assert ev.Severity == 800 and ev.Message.Text.startswith("level high ")
            assert ev.NodeId == ua.NodeId.from_string(alarm)
            # Right after an active one (it stays so for half a second), ConditionRefresh
            # sends that very event again: the same EventId, which a new one never has.
            while not getattr(got.got[-1], "ActiveState/Id", None):
                await asyncio.sleep(0.02)
            last = got.got[-1]
            res = await mc.uaclient.call([ua.CallMethodRequest(
                ObjectId=ua.NodeId(ua.ObjectIds.ConditionType),
                MethodId=ua.NodeId(ua.ObjectIds.ConditionType_ConditionRefresh),
                InputArguments=[ua.Variant(sub.subscription_id, ua.VariantType.UInt32)])])
            assert res[0].StatusCode.is_good(), res
            deadline = time.monotonic() + 3
            while sum(e.EventId == last.EventId for e in got.got) < 2:
                assert time.monotonic() < deadline, got.got
                await asyncio.sleep(0.05)
            assert last.Retain is True
            calls = await mc.uaclient.call([
                ua.CallMethodRequest(ObjectId=ua.NodeId.from_string(alarm),
                                     MethodId=ua.NodeId(m),
                                     InputArguments=[ua.Variant(ev.EventId),
                                                     ua.Variant(ua.LocalizedText("ok"))])
                for m in (ACK, CONFIRM)])
            assert [c.StatusCode.value for c in calls] == [ua.StatusCodes.BadUserAccessDenied] * 2
    asyncio.run(asyncio.wait_for(main(), 120))


def test_no_notifier_claimed_when_events_are_not_carried(diode: Diode,
                                                         asyncua_plant: PlantProcess) -> None:
    url = start_agents(diode, asyncua_plant.endpoint, events=False)

    async def main() -> None:
        deadline = time.monotonic() + 60
        async with mirror(url, "ns=2;s=Plant", 0) as mc:  # no wait for a notifier
            while (await mc.get_node("ns=2;s=Boiler").read_attribute(A.BrowseName)
                   ).StatusCode.is_bad():
                assert time.monotonic() < deadline, "the model never reached the mirror"
                await asyncio.sleep(0.3)
            await asyncio.sleep(1.0)  # a notifier announcement would have come with it
            for nid in ("ns=2;s=Boiler", "i=2253"):
                assert await notifier_bits(mc, nid) == 0, nid
                with pytest.raises(ua.UaStatusCodeError) as exc:
                    await subscribe(mc, nid, [])
                assert exc.value.code == ua.StatusCodes.BadServiceUnsupported
    asyncio.run(asyncio.wait_for(main(), 90))
