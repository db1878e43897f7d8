"""A snapshot encoded and decoded node by node (so a worker thread doing it lets the
event loop run between nodes) is the snapshot cbor2 encodes and decodes whole: the
same bytes, so the same model version."""

from __future__ import annotations

import cbor2
from hypothesis import given
from hypothesis import strategies as st

from agent.opcua.model import ModelSnapshot, NodeRecord, _loads_in_pieces

records = st.builds(NodeRecord, st.text(max_size=8), st.integers(1, 128),
                    st.one_of(st.none(), st.text(max_size=5)), st.none(), st.none(),
                    st.dictionaries(st.integers(1, 27), st.binary(max_size=6), max_size=3),
                    st.lists(st.tuples(st.text(max_size=4), st.text(max_size=4)), max_size=2)
                    .map(tuple))


@given(st.lists(records, max_size=40), st.lists(st.text(max_size=6), max_size=3))
def test_pieces_encode_as_cbor2_does(nodes: list[NodeRecord], namespaces: list[str]) -> None:
    whole = cbor2.dumps({"format": 1, "namespaces": namespaces,
                         "nodes": [n.to_list() for n in nodes]}, canonical=True)
    assert ModelSnapshot(tuple(namespaces), tuple(nodes)).canonical() == whole


@given(st.lists(records, max_size=30), st.lists(st.text(max_size=6), max_size=3))
def test_pieces_decode_as_cbor2_does(nodes: list[NodeRecord], namespaces: list[str]) -> None:
    raw = ModelSnapshot(tuple(namespaces), tuple(nodes)).canonical()
    assert _loads_in_pieces(raw) == cbor2.loads(raw)


def test_other_shapes_are_decoded_whole() -> None:
    indefinite = b"\xa1\x65nodes\x9f\x01\x02\xff"  # {"nodes": [1, 2]} with an indefinite array
    for raw in (cbor2.dumps([1, 2]), cbor2.dumps({"a": 1}), indefinite):
        assert _loads_in_pieces(raw) == cbor2.loads(raw)


def test_a_long_node_array_encodes_as_cbor2_does() -> None:
    nodes = tuple(NodeRecord(f"ns=2;i={i}", 2, "ns=2;i=0", None, None, {13: bytes([i % 7])})
                  for i in range(300))  # a two-byte array length
    whole = cbor2.dumps({"format": 1, "namespaces": ["urn:a"],
                         "nodes": [n.to_list() for n in nodes]}, canonical=True)
    assert ModelSnapshot(("urn:a",), nodes).canonical() == whole
