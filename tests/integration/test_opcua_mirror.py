"""OPC UA end to end: a real plant server, the TX source, the link core, the RX mirror.

```
plant (asyncua server, child process) ─► OpcuaSource (asyncua client) ─► LinkSender
      ─► datagrams (cut on demand) ─► LinkReceiver ─► OpcuaMirror (asyncua server) ◄─ test clients
```

The plant runs in its own process so the custom structure classes it
registers in asyncua do not exist in this one: a client here can decode the
mirror's PumpSetpoint values only from the definitions the mirror serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from asyncua import Client, Node, Server, ua

from agent.carousel import CarouselScheduler
from agent.link.health import HealthParams, LinkHealth
from agent.link.receiver import LinkReceiver, ReceiverParams
from agent.link.sender import LinkSender, SenderParams
from agent.opcua.mirror import OpcuaMirror, OpcuaMirrorConfig
from agent.opcua.source import OpcuaSource, OpcuaSourceConfig
from agent.rxcore import RxCore
from agent.txcore import TxCore
from diode_tools.sim.mosquitto import free_port
from diode_tools.sim.plant_opcua import PlantProcess

KEY = bytes(range(32))
NS = 2  # the plant's namespace index, on both sides
VARIABLES = 300


@pytest.fixture(scope="module")
def plant() -> Iterator[PlantProcess]:
    p = PlantProcess(free_port(), variables=VARIABLES, rate=600)
    try:
        yield p
    finally:
        p.stop()


class Pipe:
    """The source's records through the TX core, the real sans-IO link and the RX core
    into the mirror, as the agents wire them."""

    def __init__(self, src: OpcuaSource, mirror: OpcuaMirror) -> None:
        self.src, self.mirror = src, mirror
        now = time.monotonic()
        sender = LinkSender(SenderParams(repeat=1, interleave=1), KEY, epoch=1 << 30)
        self.tx = TxCore(sender, [src], CarouselScheduler(50e6, 16384), now)
        self.rx = RxCore(LinkReceiver(ReceiverParams(), KEY), LinkHealth(HealthParams()),
                         {("opcua", "plant"): mirror})
        self.cut = False

    @property
    def delivered(self) -> int:
        return self.rx.receiver.counters["records"]

    async def run(self) -> None:
        while True:
            now = time.monotonic()
            self.tx.poll(now, time.time(), 2000)
            self.tx.sender.flush(now)
            self.rx.timer(now)
            for d in self.tx.datagrams():
                if not self.cut:
                    self.rx.datagram(d, now)
            self.tx.sent()
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def gateway(plant: Any, mirror_kw: dict[str, Any] | None = None, url: str | None = None,
                  **src_kw: Any) -> AsyncIterator[tuple[Pipe, str]]:
    """Mirror + source + pipe, running until the block ends; yields (pipe, mirror url).
    `plant` is anything with an `endpoint` (an asyncua or a node-opcua plant)."""
    url = url or f"opc.tcp://127.0.0.1:{free_port()}/diode/"
    mirror = OpcuaMirror(OpcuaMirrorConfig("plant", url, users=(("admin", "secret"),),
                                           bad_after=1.0, **(mirror_kw or {})))
    kw: dict[str, Any] = {"rebrowse_period": 60.0, "model_carousel_period": 2.0,
                          "value_keyframe_period": 2.0, **src_kw}
    src = OpcuaSource(OpcuaSourceConfig("plant", plant.endpoint, **kw))
    await mirror.start()
    await mirror.set_link_state("UP", source_state="connected")
    pipe = Pipe(src, mirror)
    await src.start()
    tasks = [asyncio.create_task(pipe.run())]
    try:
        await until(lambda: mirror.state == "serving" and src.state == "connected", 30,
                    "the mirror serving the model")
        yield pipe, url
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await src.stop()
        await mirror.stop()


async def until(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def connected(url: str, user: str | None = None, password: str | None = None
                    ) -> AsyncIterator[Client]:
    client = Client(url)
    if user is not None:
        client.set_user(user)
        client.set_password(password or "")
    await client.connect()
    try:
        yield client
    finally:
        await client.disconnect()


async def tree(client: Client, root: str) -> dict[str, dict[str, Any]]:
    """Every node below `root` (hierarchical references) with its structure."""
    out: dict[str, dict[str, Any]] = {}
    todo: list[tuple[Node, Any]] = [(client.get_node(root), None)]
    while todo:
        node, parent_class = todo.pop()
        key = node.nodeid.to_string()
        if key in out:
            continue
        info: dict[str, Any] = {
            "class": await node.read_node_class(),
            "browse_name": (await node.read_browse_name()).to_string(),
            "display_name": (await node.read_display_name()).Text,
            "static": parent_class == ua.NodeClass.Method,
        }
        if info["class"] == ua.NodeClass.Variable:
            attrs = (ua.AttributeIds.DataType, ua.AttributeIds.ValueRank,
                     ua.AttributeIds.ArrayDimensions, ua.AttributeIds.Description)
            for attr in attrs:
                dv = (await client.read_attributes([node], attr))[0]
                info[attr.name] = (dv.StatusCode.name, dv.Value.Value if dv.Value else None)
        out[key] = info
        todo.extend((c, info["class"]) for c in await node.get_children())
    return out


def variables(t: dict[str, dict[str, Any]]) -> list[str]:
    """Live variables (not method arguments, whose value is static and in the model)."""
    return sorted(k for k, v in t.items() if v["class"] == ua.NodeClass.Variable
                  and not v["static"])


async def datavalues(client: Client, ids: list[str]) -> list[ua.DataValue]:
    return list(await client.read_attributes([client.get_node(i) for i in ids]))


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), 80))


# -- tests ----------------------------------------------------------------------------


def test_mirror_has_the_same_nodes_types_and_values(plant: PlantProcess) -> None:
    async def main() -> None:
        async with gateway(plant, trigger="StatusValueTimestamp") as (pipe, url), \
                connected(url) as mc, connected(plant.endpoint) as pc:
            # Structures and enumerations decode with what the mirror serves alone.
            loaded = await mc.load_data_type_definitions()
            assert "PumpSetpoint" in loaded and "MotorStateEnum" in loaded
            assert [m.name for m in ua.MotorStateEnum] == ["Stopped", "Running", "Fault"]  # type: ignore[attr-defined]

            root = f"ns={NS};s=Plant"
            source_tree, mirror_tree = await tree(pc, root), await tree(mc, root)
            assert len(source_tree) > VARIABLES
            assert mirror_tree == source_tree
            # The custom data types: same ids, names and definitions.
            for name in ("PumpSetpoint", "MotorStateEnum"):
                pnode = await pc.nodes.base_data_type.get_child(
                    ["0:Structure" if name == "PumpSetpoint" else "0:Enumeration", f"{NS}:{name}"])
                mnode = mc.get_node(pnode.nodeid)
                assert await mnode.read_browse_name() == await pnode.read_browse_name()
                assert await mnode.read_data_type_definition() == \
                    await pnode.read_data_type_definition()
            assert await mc.get_namespace_array() == \
                [*await pc.get_namespace_array(), "urn:diode:mirror:diagnostics"]

            # Values: freeze the plant, let the link drain, compare everything.
            ids = variables(source_tree)
            plant.pause()
            try:
                async def same() -> bool:
                    p, m = await datavalues(pc, ids), await datavalues(mc, ids)
                    return [(d.Value, d.StatusCode, d.SourceTimestamp) for d in p] == \
                        [(d.Value, d.StatusCode, d.SourceTimestamp) for d in m]
                try:
                    await until(same, 15, "mirror values equal to the plant's")
                except AssertionError:
                    p, m = await datavalues(pc, ids), await datavalues(mc, ids)
                    diff = [(i, a, b) for i, a, b in zip(ids, p, m, strict=True)
                            if (a.Value, a.StatusCode, a.SourceTimestamp)
                            != (b.Value, b.StatusCode, b.SourceTimestamp)]
                    raise AssertionError(f"{len(diff)} differ, e.g. {diff[:3]}") from None
            finally:
                plant.resume()
            sp = (await datavalues(mc, [f"ns={NS};s=Special.Setpoint"]))[0].Value.Value
            assert type(sp).__name__ == "PumpSetpoint" and sp.Name.startswith("pump-")
            arr = (await datavalues(mc, [f"ns={NS};s=Special.DoubleArray"]))[0].Value
            assert arr.is_array and len(arr.Value) == 10
            assert pipe.mirror.all_counters()["values_bad_variant"] == 0
    run(main)


def test_mirror_is_read_only_for_everyone(plant: PlantProcess) -> None:
    writable = f"ns={NS};s=Special.Writable"

    async def refused(what: str, op: Awaitable[Any],
                      code: int = ua.StatusCodes.BadUserAccessDenied) -> None:
        try:
            result = await op
        except ua.UaStatusCodeError as exc:
            assert exc.code == code, (what, exc)
        else:
            raise AssertionError(f"{what} was accepted: {result!r}")

    async def main() -> None:
        async with gateway(plant) as (_, url), connected(plant.endpoint) as pc:
            plant_al = await pc.get_node(writable).read_attribute(ua.AttributeIds.AccessLevel)
            assert plant_al.Value.Value & ua.AccessLevel.CurrentWrite.mask
            for user, password in ((None, None), ("admin", "secret")):
                async with connected(url, user, password) as mc:
                    node = mc.get_node(writable)
                    for attr in (ua.AttributeIds.AccessLevel, ua.AttributeIds.UserAccessLevel):
                        al = (await node.read_attribute(attr)).Value.Value
                        assert al == ua.AccessLevel.CurrentRead.mask, (user, attr, al)
                    # writes are refused per item (agent/opcua/services.py)
                    await refused(f"write as {user}", node.write_value(2.5),
                                  ua.StatusCodes.BadNotWritable)
                    await refused(f"write DisplayName as {user}", node.write_attribute(
                        ua.AttributeIds.DisplayName,
                        ua.DataValue(ua.Variant(ua.LocalizedText("x")))),
                        ua.StatusCodes.BadNotWritable)
                    special = mc.get_node(f"ns={NS};s=Special")
                    await refused(f"call as {user}", special.call_method(f"{NS}:Reset"))
                    await refused(f"add node as {user}", mc.nodes.objects.add_folder(NS, "Evil"))
                    await refused(f"delete node as {user}", mc.delete_nodes([node]))
                    assert (await node.read_value()) == 1.5
            # Registering a server in the mirror's discovery list is refused too.
            probe = Client(url)
            await probe.connect_sessionless()
            try:
                await refused("RegisterServer", probe.register_server(Server()))
            finally:
                await probe.disconnect_sessionless()
            # "admin" without its password is no one.
            with pytest.raises(ua.UaStatusCodeError):
                async with connected(url, "admin", "wrong"):
                    pass
    run(main)


def test_nodes_added_and_removed_on_the_source_follow(plant: PlantProcess) -> None:
    async def main() -> None:
        async with gateway(plant, rebrowse_period=1.0) as (pipe, url), connected(url) as mc:
            before = pipe.mirror.version
            added = plant.add_variable()

            async def present() -> bool:
                dv = (await datavalues(mc, [added]))[0]
                return dv.StatusCode.is_good() and dv.Value.Value is not None
            await until(present, 15, f"{added} on the mirror")
            assert pipe.mirror.version != before
            node = mc.get_node(added)
            assert (await node.read_browse_name()).Name == added.split(".")[-1]
            assert await node.get_parent() == mc.get_node(f"ns={NS};s=Added")

            assert plant.remove_last_added() == added

            async def gone() -> bool:
                dv = (await mc.read_attributes([node], ua.AttributeIds.BrowseName))[0]
                return dv.StatusCode.value == ua.StatusCodes.BadNodeIdUnknown
            await until(gone, 15, f"{added} removed from the mirror")
            names = [c.nodeid for c in await mc.get_node(f"ns={NS};s=Added").get_children()]
            assert node.nodeid not in names
    run(main)


def test_quality_follows_the_link(plant: PlantProcess) -> None:
    changing = f"ns={NS};s=Special.Int32"
    constant = f"ns={NS};s=Special.Writable"  # never changes: Good again via a keyframe

    async def main() -> None:
        async with gateway(plant) as (pipe, url), connected(url) as mc:
            mirror = pipe.mirror

            async def status(i: str) -> ua.DataValue:
                return (await datavalues(mc, [i]))[0]

            assert (await status(changing)).StatusCode.is_good()
            pipe.cut = True
            await mirror.set_link_state("DOWN", heartbeat_age=3.5)
            dv = await status(constant)
            assert dv.StatusCode.value == ua.StatusCodes.UncertainLastUsableValue
            assert dv.Value.Value == 1.5  # the value is kept while Uncertain

            async def bad() -> bool:
                return (await status(changing)).StatusCode.value == \
                    ua.StatusCodes.BadNoCommunication
            await until(bad, 5, "BadNoCommunication after bad_after")
            diag = mc.get_node(f"ns={mirror._diag_ns};s=DiodeDiagnostics.Quality")
            assert await diag.read_value() == "Bad"
            link = mc.get_node(f"ns={mirror._diag_ns};s=DiodeDiagnostics.LinkState")
            assert await link.read_value() == "DOWN"

            pipe.cut = False
            await mirror.set_link_state("UP", source_state="connected", heartbeat_age=0.1)
            dv = await status(constant)
            assert dv.StatusCode.value == ua.StatusCodes.UncertainLastUsableValue
            assert dv.Value.Value == 1.5
            for i in (changing, constant):
                async def good(i: str = i) -> bool:
                    return (await status(i)).StatusCode.is_good()
                await until(good, 10, f"{i} Good again")

            # The TX source losing its server is the same as losing the link.
            await mirror.set_link_state("UP", source_state="disconnected")
            assert (await status(changing)).StatusCode.value == \
                ua.StatusCodes.UncertainLastUsableValue
            await mirror.set_link_state("UP", source_state="connected")
    run(main)


def test_source_state_and_counters(plant: PlantProcess) -> None:
    async def main() -> None:
        async with gateway(plant) as (pipe, _):
            src = pipe.src
            await until(lambda: src.counters["keyframe_records"] > 0, 10, "a value keyframe")
            c = src.counters
            assert c["monitored_items"] >= VARIABLES and c["monitor_errors"] == 0
            assert c["changes"] > 0 and c["queue_dropped"] == 0 and c["model_versions"] == 1
            assert pipe.mirror.assembler.counters["model_chunks_ignored"] >= 0
    run(main)


def test_unreachable_server_is_retried_and_counted() -> None:
    async def main() -> None:
        src = OpcuaSource(OpcuaSourceConfig("nowhere", f"opc.tcp://127.0.0.1:{free_port()}",
                                            reconnect_min=0.1, reconnect_max=0.2, timeout=1.0))
        await src.start()
        try:
            await until(lambda: src.counters["connect_failures"] >= 2, 10, "two failed tries")
            assert src.state in ("connecting", "disconnected")
            assert src.counters["outages"] == 1  # one outage (since start), tried again
        finally:
            await src.stop()
        assert src.state == "stopped"
    run(main)


def test_wrong_password_is_a_loud_refusal() -> None:
    async def main() -> None:
        url = f"opc.tcp://127.0.0.1:{free_port()}/diode/"
        mirror = OpcuaMirror(OpcuaMirrorConfig("m", url, allow_anonymous=False,
                                               users=(("op", "right"),)))
        await mirror.start()
        src = OpcuaSource(OpcuaSourceConfig("m", url, username="op", password="wrong"))
        try:
            await src.start()
            # refused, and tried again after the first backoff (5 s): not fatal
            await until(lambda: src.counters["refusals"] >= 2, 15, "the refusal, twice")
            assert src.state == "refused" and src.last_error is not None
            assert "BadUserAccessDenied" in src.last_error and "Fix:" in src.last_error
            assert "wrong" not in src.last_error  # no secret in a log line
        finally:
            await src.stop()
            await mirror.stop()
    run(main)
