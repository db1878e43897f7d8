"""A model that grows from a crawl in progress (agent/opcua/growth.py): the parts TX
makes, the order the mirror takes them in, and the crawler handing nodes over as
soon as their attributes are read."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import pytest
from asyncua import ua
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.link import records
from agent.link.records import RecordError
from agent.opcua import crawl
from agent.opcua.codec import OpcuaModelPart
from agent.opcua.crawl import Crawler, Limits
from agent.opcua.growth import Growth, PartWriter, decode_nodes, parts
from agent.opcua.model import ModelError, NodeRecord
from agent.opcua.raw_values import RawValue
from tests.unit.opcua.test_model import FakeSession, _n, snapshot

NS = ("http://opcfoundation.org/UA/", "urn:x", "urn:plant")


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 400), size=st.integers(64, 8192), seed=st.integers(0, 100))
def test_parts_carry_every_node_in_order_within_the_size(n: int, size: int, seed: int) -> None:
    nodes = list(snapshot(n, seed).nodes)
    out = parts("plant", "c1", 5, NS, nodes, size)
    assert [p.index for p in out] == list(range(5, 5 + len(out)))
    got: list[NodeRecord] = []
    for p in out:
        assert p.version == "" and (p.source, p.crawl) == ("plant", "c1")
        namespaces, part_nodes = decode_nodes(p.data)
        assert namespaces == NS
        assert len(p.data) <= size or len(part_nodes) == 1
        got.extend(part_nodes)
        assert records.decode(records.encode(p)) == p
    assert got == nodes


def test_malformed_parts_are_errors() -> None:
    with pytest.raises(ModelError):
        decode_nodes(b"not zlib")
    import zlib

    import cbor2
    with pytest.raises(ModelError):
        decode_nodes(zlib.compress(cbor2.dumps({"nodes": []})))
    with pytest.raises(ModelError):
        decode_nodes(zlib.compress(cbor2.dumps([["urn:x"], [["not", "a", "node"]]])))
    for item in ([7, "s", "c", -1, "", b""], [7, "s", "c", True, "", b""],
                 [7, "s", "c", 0, None, b""], [7, "s", "c", 0, ""]):
        with pytest.raises(RecordError):
            records.decode_item(item)


def test_growth_takes_one_crawl_in_order_and_stops_at_a_gap() -> None:
    def part(crawl: str, index: int) -> OpcuaModelPart:
        return OpcuaModelPart("p", crawl, index, "", b"")
    g = Growth()
    a = snapshot(3).nodes
    assert not g.accept(part("c1", 1))      # joined in the middle: nothing
    assert g.accept(part("c1", 0)) and g.add(NS, list(a[:2]))
    assert g.accept(part("c1", 1)) and g.add(NS, list(a[2:]))
    assert g.snapshot().nodes == a and g.snapshot().version == snapshot(3).version
    assert not g.accept(part("c1", 3))      # part 2 was lost: the crawl stops growing
    assert not g.accept(part("c1", 4))
    assert g.accept(part("c2", 0))          # a new crawl starts again from nothing
    assert g.records == []
    assert not g.accept(part("c1", 1))      # another crawl's part in between stops it
    assert not g.accept(part("c2", 1))
    assert g.accept(part("c3", 0)) and g.add(NS, list(a[:1]))
    assert g.accept(part("c3", 1)) and not g.add(("other",), list(a[1:]))
    assert not g.accept(part("c3", 2))      # a namespace array that changed stopped it


def test_part_writer_numbers_parts_and_ends_with_the_version() -> None:
    sent: list[OpcuaModelPart] = []
    w = PartWriter("p", "c9", 200, sent.append)
    nodes = list(snapshot(50).nodes)
    w(NS, nodes[:20])
    w(NS, nodes[20:])
    w.end("0123456789abcdef")
    assert [p.index for p in sent] == list(range(len(sent))) and len(sent) > 3
    assert sent[-1].version == "0123456789abcdef" and sent[-1].data == b""
    assert [n for p in sent[:-1] for n in decode_nodes(p.data)[1]] == nodes


class SlowReads(FakeSession):
    """Reads answered after a random delay: requests in flight finish out of order."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.rng = random.Random(seed)

    async def read(self, params: ua.ReadParameters) -> list[ua.DataValue]:
        await asyncio.sleep(self.rng.random() / 100)
        return await super().read(params)


@pytest.mark.parametrize("seed", range(5))
def test_the_crawler_hands_over_nodes_once_read_in_the_snapshot_order(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake server answers reads of at most 50 attributes, late and out of order,
    two in flight: each node is handed over once every attribute of it is in."""
    monkeypatch.setattr(crawl, "PART_NODES", 4)
    handed: list[list[NodeRecord]] = []
    values: list[tuple[str, RawValue]] = []

    def grow(ns: Sequence[str], nodes: list[NodeRecord], vals: list[tuple[str, RawValue]]
             ) -> None:
        assert {nid for nid, _ in vals} <= {n.node_id for n in nodes}  # with their nodes
        handed.append(list(nodes))
        values.extend(vals)
    crawler = Crawler(SlowReads(seed), Limits(browse=100, read=40, monitored=10))
    result = asyncio.run(crawler.crawl([_n("i=85")], list(NS), grow))
    whole = asyncio.run(Crawler(FakeSession(), Limits(browse=100, read=1000, monitored=10))
                        .crawl([_n("i=85")], list(NS)))
    assert [n for h in handed for n in h] == list(whole.snapshot.nodes)
    assert result.snapshot == whole.snapshot
    # the live variables' values came along (the fake server answers them Bad)
    assert [nid for nid, _ in values] == result.variables == whole.variables
    assert {raw[1] for _, raw in values} == {ua.StatusCodes.BadAttributeIdInvalid}
    # at least PART_NODES at a time but the last; and many times for these 29 nodes
    assert len(handed) >= 3 and all(len(h) >= 4 for h in handed[:-1]) and handed[-1]
