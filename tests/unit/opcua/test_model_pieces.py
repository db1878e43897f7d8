"""A snapshot decoded node by node (so a worker thread decoding it lets the event loop
run between nodes) is the snapshot cbor2 decodes whole."""

from __future__ import annotations

import cbor2
from hypothesis import given
from hypothesis import strategies as st

from agent.opcua.model import ModelSnapshot, NodeRecord, _loads_in_pieces

records = st.builds(NodeRecord, st.text(max_size=8), st.integers(1, 128),
                    st.one_of(st.none(), st.text(max_size=5)), st.none(), st.none(),
                    st.dictionaries(st.integers(1, 27), st.binary(max_size=6), max_size=3))


@given(st.lists(records, max_size=30), st.lists(st.text(max_size=6), max_size=3))
def test_pieces_decode_as_cbor2_does(nodes: list[NodeRecord], namespaces: list[str]) -> None:
    raw = ModelSnapshot(tuple(namespaces), tuple(nodes)).canonical()
    assert _loads_in_pieces(raw) == cbor2.loads(raw)


def test_other_shapes_are_decoded_whole() -> None:
    indefinite = b"\xa1\x65nodes\x9f\x01\x02\xff"  # {"nodes": [1, 2]} with an indefinite array
    for raw in (cbor2.dumps([1, 2]), cbor2.dumps({"a": 1}), indefinite):
        assert _loads_in_pieces(raw) == cbor2.loads(raw)
