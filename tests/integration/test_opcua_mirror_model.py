"""The mirror applying model versions by hand-made snapshots: renames, moves and
deletions in place (IT subscriptions survive), and a namespace-array change
(full rebuild, diagnostics move to the new last index)."""

from __future__ import annotations

import asyncio
from typing import Any

from asyncua import Client, ua
from asyncua.ua.ua_binary import variant_to_binary

from agent.link import records
from agent.opcua import codec as opcua_codec
from agent.opcua.mirror import DIAG_NAMESPACE, OpcuaMirror, OpcuaMirrorConfig
from agent.opcua.model import ModelSnapshot, NodeRecord
from diode_tools.sim.mosquitto import free_port

A = ua.AttributeIds
NS = ("http://opcfoundation.org/UA/", "urn:source", "urn:plant")


def v(value: Any, vtype: ua.VariantType) -> bytes:
    return variant_to_binary(ua.Variant(value, vtype))


def folder(nid: str, name: str, parent: str = "i=85", display: str | None = None) -> NodeRecord:
    return NodeRecord(nid, 1, parent, "i=35", "i=61", {
        A.BrowseName: v(ua.QualifiedName(name, 2), ua.VariantType.QualifiedName),
        A.DisplayName: v(ua.LocalizedText(display or name), ua.VariantType.LocalizedText)})


def var(nid: str, name: str, parent: str, access: int = 3) -> NodeRecord:
    return NodeRecord(nid, 2, parent, "i=47", "i=63", {
        A.BrowseName: v(ua.QualifiedName(name, 2), ua.VariantType.QualifiedName),
        A.DisplayName: v(ua.LocalizedText(name), ua.VariantType.LocalizedText),
        A.DataType: v(ua.NodeId(11), ua.VariantType.NodeId),
        A.ValueRank: v(-1, ua.VariantType.Int32),
        A.AccessLevel: v(access, ua.VariantType.Byte)})


async def feed(mirror: OpcuaMirror, snap: ModelSnapshot) -> None:
    for rec in snap.chunks("m", 100):
        await mirror.apply(records.decode(records.encode(rec)))


def test_model_versions_apply_in_place_and_namespace_change_rebuilds() -> None:
    url = f"opc.tcp://127.0.0.1:{free_port()}/diode/"

    async def main() -> None:
        mirror = OpcuaMirror(OpcuaMirrorConfig("m", url))
        await mirror.start()
        client = Client(url)
        try:
            a = ModelSnapshot(NS, (folder("ns=2;s=F", "F"), var("ns=2;s=F.X", "X", "ns=2;s=F"),
                                   var("ns=2;s=F.Y", "Y", "ns=2;s=F"), folder("ns=2;s=G", "G")))
            await feed(mirror, a)
            assert mirror.version == a.version
            await client.connect()
            x = client.get_node("ns=2;s=F.X")
            assert (await x.read_browse_name()).Name == "X"
            assert await x.read_attribute(A.UserAccessLevel) is not None
            assert (await x.read_data_value(raise_on_bad_status=False)).StatusCode.value == \
                ua.StatusCodes.BadWaitingForInitialData
            await mirror.apply(opcua_codec.OpcuaValues("m", False, (
                ("ns=2;s=F.X", v(4.5, ua.VariantType.Double), 0, None, None),)))
            assert await x.read_value() == 4.5
            # An IT client subscribed to X keeps its subscription across the rename.
            seen: list[Any] = []

            class Handler:
                def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
                    seen.append(val)
            sub = await client.create_subscription(50, Handler())
            await sub.subscribe_data_change(x)

            # B: F renamed (display), X moved under G, Y deleted, Z added.
            b = ModelSnapshot(NS, (folder("ns=2;s=F", "F", display="Furnace"),
                                   folder("ns=2;s=G", "G"),
                                   var("ns=2;s=F.X", "X", "ns=2;s=G"),
                                   var("ns=2;s=G.Z", "Z", "ns=2;s=G")))
            await feed(mirror, b)
            assert mirror.version == b.version
            f, g = client.get_node("ns=2;s=F"), client.get_node("ns=2;s=G")
            assert (await f.read_display_name()).Text == "Furnace"
            objects = {d.NodeId.to_string(): d.DisplayName.Text
                       for d in await client.nodes.objects.get_children_descriptions()}
            assert objects["ns=2;s=F"] == "Furnace"  # the browse result follows the rename
            assert {c.nodeid.to_string() for c in await g.get_children()} == \
                {"ns=2;s=F.X", "ns=2;s=G.Z"}
            assert await f.get_children() == []
            y = (await client.read_attributes([client.get_node("ns=2;s=F.Y")], A.BrowseName))[0]
            assert y.StatusCode.value == ua.StatusCodes.BadNodeIdUnknown
            await mirror.apply(opcua_codec.OpcuaValues("m", False, (
                ("ns=2;s=F.X", v(7.0, ua.VariantType.Double), 0, None, None),)))
            for _ in range(100):
                if 7.0 in seen:
                    break
                await asyncio.sleep(0.02)
            assert 7.0 in seen
            assert mirror.all_counters()["nodes_updated"] >= 2

            # C: the source gained a namespace before ours: everything is rebuilt.
            c = ModelSnapshot(("http://opcfoundation.org/UA/", "urn:source", "urn:new", "urn:plant"),
                              (folder("ns=3;s=F", "F"), var("ns=3;s=F.X", "X", "ns=3;s=F")))
            await feed(mirror, c)
            ns = await client.get_namespace_array()
            assert ns == [*c.namespaces, DIAG_NAMESPACE]
            assert (await client.get_node("ns=3;s=F.X").read_browse_name()).Name == "X"
            gone = (await client.read_attributes([g], A.BrowseName))[0]
            assert gone.StatusCode.value == ua.StatusCodes.BadNodeIdUnknown
            diag = client.get_node(f"ns={ns.index(DIAG_NAMESPACE)};s=DiodeDiagnostics.ModelVersion")
            assert await diag.read_value() == c.version
        finally:
            await client.disconnect()
            await mirror.stop()

    asyncio.run(asyncio.wait_for(main(), 60))
