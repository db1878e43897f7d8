"""The mirror applying model versions by hand-made snapshots: renames, moves and
deletions in place (IT subscriptions survive), namespace-array changes as a diff
(an appended namespace changes no node id; an inserted one moves only the nodes
after it; the diagnostics move only when their index must), and a node that
changed class (re-created, its kept neighbours linked to it again)."""

from __future__ import annotations

import asyncio
import gc
from dataclasses import replace
from typing import Any

from asyncua import Client, ua
from asyncua.ua.ua_binary import variant_to_binary

from agent.link import records
from agent.opcua import codec as opcua_codec
from agent.opcua.growth import PartWriter
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


def test_model_versions_apply_in_place_and_namespace_changes_as_a_diff() -> None:
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
            codes: list[str] = []

            class Handler:
                def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
                    seen.append(val)
                    codes.append(data.monitored_item.Value.StatusCode.name)
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

            # B2: a namespace appended, with a node: no node id changes, X keeps flowing;
            # the diagnostics leave the index the new namespace takes.
            b2 = ModelSnapshot((*NS, "urn:extra"), (*b.nodes, var("ns=3;s=E", "E", "ns=2;s=G")))
            await feed(mirror, b2)
            ns = await client.get_namespace_array()
            assert ns == [*b2.namespaces, DIAG_NAMESPACE]
            assert (await client.get_node("ns=3;s=E").read_browse_name()).Name == "E"
            assert {c.nodeid.to_string() for c in await g.get_children()} == \
                {"ns=2;s=F.X", "ns=2;s=G.Z", "ns=3;s=E"}
            await mirror.apply(opcua_codec.OpcuaValues("m", False, (
                ("ns=2;s=F.X", v(9.0, ua.VariantType.Double), 0, None, None),)))
            for _ in range(100):
                if 9.0 in seen:
                    break
                await asyncio.sleep(0.02)
            assert 9.0 in seen and set(codes) == {"Good"}, codes
            assert await x.read_value() == 9.0
            diag = client.get_node("ns=4;s=DiodeDiagnostics.ModelVersion")
            assert await diag.read_value() == b2.version

            # B3: a URI replaced in place (same length): the diagnostics keep their node id,
            # so an IT client's item on them sees the new version, never BadNodeIdUnknown.
            diag_seen: list[Any] = []

            class DiagHandler:
                def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
                    diag_seen.append(data.monitored_item.Value)
            diag_sub = await client.create_subscription(50, DiagHandler())
            await diag_sub.subscribe_data_change(diag)
            # X's DataType rewritten too: in place, so an item on that attribute sees it.
            await diag_sub.subscribe_data_change(x, A.DataType)
            float_x = NodeRecord(b.nodes[2].node_id, 2, "ns=2;s=G", "i=47", "i=63", {
                **b.nodes[2].attrs, A.DataType: v(ua.NodeId(10), ua.VariantType.NodeId)})
            b3 = ModelSnapshot((*NS, "urn:other"), (*b.nodes[:2], float_x, b.nodes[3]))
            await feed(mirror, b3)
            for _ in range(100):
                if any(dv.Value.Value == b3.version for dv in diag_seen) and \
                        any(dv.Value.Value == ua.NodeId(10) for dv in diag_seen):
                    break
                await asyncio.sleep(0.02)
            assert [dv.Value.Value for dv in diag_seen if isinstance(dv.Value.Value, str)
                    ][-1] == b3.version
            assert ua.NodeId(10) in [dv.Value.Value for dv in diag_seen]
            assert all(dv.StatusCode.is_good() for dv in diag_seen)
            gone = (await client.read_attributes([client.get_node("ns=3;s=E")], A.BrowseName))[0]
            assert gone.StatusCode.value == ua.StatusCodes.BadNodeIdUnknown  # urn:extra went

            # C: the source gained a namespace before the plant's: its nodes move to ns=3.
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
            for _ in range(100):  # X's old id is gone: its item is told
                if "BadNodeIdUnknown" in codes:
                    break
                await asyncio.sleep(0.02)
            assert "BadNodeIdUnknown" in codes

            # D: F changed class (an Object became a View): re-created; X, kept, is still
            # its child, and K's reference to it is there again.
            k = NodeRecord("ns=3;s=K", 2, "i=85", "i=35", "i=63", var("x", "K", "").attrs,
                           (("i=53", "ns=3;s=F"),))
            d1 = ModelSnapshot(c.namespaces, (*c.nodes, k))
            await feed(mirror, d1)
            view = NodeRecord("ns=3;s=F", 128, "i=85", "i=35", None, folder("x", "F").attrs)
            d2 = ModelSnapshot(c.namespaces, (view, c.nodes[1], k))
            await feed(mirror, d2)
            f3 = client.get_node("ns=3;s=F")
            assert await f3.read_node_class() == ua.NodeClass.View
            assert [n.nodeid.to_string() for n in await f3.get_children()] == ["ns=3;s=F.X"]
            assert [n.nodeid.to_string() for n in await client.get_node("ns=3;s=K").get_referenced_nodes(
                ua.ObjectIds.HasCause, ua.BrowseDirection.Forward)] == ["ns=3;s=F"]
        finally:
            await client.disconnect()
            await mirror.stop()

    asyncio.run(asyncio.wait_for(main(), 60))


def _grow(crawl: str, nodes: list[NodeRecord], sizes: list[int]) -> list[opcua_codec.OpcuaModelPart]:
    """The parts of a crawl of `nodes`, `sizes` nodes each (what TX's PartWriter sends)."""
    out: list[opcua_codec.OpcuaModelPart] = []
    writer = PartWriter("m", crawl, 1 << 20, out.append)
    start = 0
    for n in sizes:
        writer(NS, nodes[start:start + n])
        start += n
    writer.end(ModelSnapshot(NS, tuple(nodes)).version)
    return out


def _scanned(mirror: OpcuaMirror, node: str) -> bool:
    """Whether the cycle collector still scans the mirror's node (heap.settle froze it)."""
    nd = mirror.server.iserver.aspace[ua.NodeId.from_string(node)]
    return any(o is nd for o in gc.get_objects())


def test_the_mirror_serves_a_crawl_while_it_grows() -> None:
    """Parts are built as they come (a client browses them at once); the end part
    makes them the model, with the references that waited for a later part; the
    carousel's copy of that model changes nothing. A mirror that missed a part
    waits for the model itself and applies it as a diff to what it grew."""
    url = f"opc.tcp://127.0.0.1:{free_port()}/diode/"
    later_ref = ("i=35", "ns=2;s=G")  # F organizes G, which comes in the second part
    nodes = [NodeRecord("ns=2;s=F", 1, "i=85", "i=35", "i=61", {
        **folder("ns=2;s=F", "F").attrs}, (later_ref,)),
             var("ns=2;s=F.X", "X", "ns=2;s=F"), folder("ns=2;s=G", "G"),
             var("ns=2;s=G.Z", "Z", "ns=2;s=G")]
    snap = ModelSnapshot(NS, tuple(nodes))

    async def main() -> None:
        mirror = OpcuaMirror(OpcuaMirrorConfig("m", url))
        await mirror.start()
        client = Client(url)
        try:
            await client.connect()
            first, second, end = _grow("c1", nodes, [2, 2])
            await mirror.apply(records.decode(records.encode(first)))
            assert mirror.state == "growing" and mirror.version is None
            assert not _scanned(mirror, "ns=2;s=F.X")  # what grew is out of the GC's scans
            x = client.get_node("ns=2;s=F.X")
            assert (await x.read_browse_name()).Name == "X"
            assert (await x.read_data_value(raise_on_bad_status=False)).StatusCode.value == \
                ua.StatusCodes.BadWaitingForInitialData
            f = client.get_node("ns=2;s=F")
            assert [c.nodeid.to_string() for c in await f.get_children()] == ["ns=2;s=F.X"]
            await mirror.apply(second)
            await mirror.apply(end)
            assert (mirror.version, mirror.state) == (snap.version, "serving")
            assert not _scanned(mirror, "ns=2;s=G.Z")  # and the model it was served as
            assert {c.nodeid.to_string() for c in await f.get_children()} == \
                {"ns=2;s=F.X", "ns=2;s=G"}  # the reference that waited for G
            c = mirror.all_counters()
            assert (c["model_parts"], c["models_grown"], c["models_installed"]) == (2, 1, 1)
            for chunk in snap.chunks("m", 100):  # the carousel's round: nothing new
                await mirror.apply(chunk)
            c = mirror.all_counters()
            assert c["models_installed"] == 1 and c["model_chunks_ignored"] >= 1
            await mirror.apply(opcua_codec.OpcuaValues("m", False, (
                ("ns=2;s=G.Z", v(2.5, ua.VariantType.Double), 0, None, None),)))
            assert await client.get_node("ns=2;s=G.Z").read_value() == 2.5
        finally:
            await client.disconnect()
            await mirror.stop()
            gc.unfreeze()

        # Part 1 of 3 lost: growing stops at the gap; the model itself fills it in.
        mirror = OpcuaMirror(OpcuaMirrorConfig("m", url))
        await mirror.start()
        try:
            p0, _, p2, end = _grow("c2", nodes, [1, 1, 2])
            for part in (p0, p2, end):
                await mirror.apply(part)
            assert mirror.version is None and sorted(mirror._records) == ["ns=2;s=F"]
            c = mirror.all_counters()
            assert (c["model_parts"], c["model_parts_ignored"], c["models_grown"]) == (1, 2, 0)
            await feed(mirror, snap)
            assert mirror.version == snap.version and sorted(mirror._records) == sorted(
                n.node_id for n in nodes)
            refs = mirror.server.iserver.aspace[ua.NodeId.from_string("ns=2;s=F")].references
            assert any(r.NodeId == ua.NodeId.from_string("ns=2;s=G") for r in refs)
            # An end part that does not match what grew is counted, never served.
            other = OpcuaMirror(OpcuaMirrorConfig("o", f"opc.tcp://127.0.0.1:{free_port()}/d/"))
            await other.start()
            try:
                q0, bad_end = _grow("c3", nodes[:2], [2])
                await other.apply(replace(q0, source="o"))
                await other.apply(replace(bad_end, source="o", version=snap.version))
                assert other.version is None and other.all_counters()["model_parts_bad"] == 1
            finally:
                await other.stop()
        finally:
            await mirror.stop()
    asyncio.run(main())
