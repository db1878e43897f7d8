"""Browse results decoded from a response's bytes are what asyncua's decoder gives, for
every kind of node id, name and result; anything else is refused as Malformed, and
OffLoopSession then decodes the response with asyncua."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import struct_from_binary, struct_to_binary
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.opcua.off_loop import OffLoopSession
from agent.opcua.raw_browse import browse_results
from agent.opcua.wire import Malformed

text = st.one_of(st.none(), st.text(max_size=8))
node_ids = st.one_of(
    st.integers(0, 255).map(lambda i: ua.NodeId(i, 0, ua.NodeIdType.TwoByte)),
    st.tuples(st.integers(0, 65535), st.integers(0, 255)).map(
        lambda t: ua.NodeId(t[0], t[1], ua.NodeIdType.FourByte)),
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 65535)).map(
        lambda t: ua.NodeId(t[0], t[1], ua.NodeIdType.Numeric)),
    st.tuples(st.text(max_size=10), st.integers(0, 65535)).map(lambda t: ua.NodeId(t[0], t[1])),
    st.uuids().map(lambda u: ua.NodeId(u, 3)),
    st.binary(max_size=8).map(lambda b: ua.NodeId(b, 2, ua.NodeIdType.ByteString)),
)
expanded = st.one_of(
    node_ids,
    st.builds(lambda n, uri, server: ua.ExpandedNodeId(n.Identifier, n.NamespaceIndex,
                                                       n.NodeIdType, uri, server),
              node_ids, st.one_of(st.none(), st.text(min_size=1, max_size=12)),
              st.one_of(st.none(), st.integers(1, 2**32 - 1))),
)
references = st.builds(
    ua.ReferenceDescription, node_ids, st.booleans(), expanded,
    st.builds(ua.QualifiedName, text, st.integers(0, 9)),
    st.builds(lambda t, loc: ua.LocalizedText(t, loc), text, text),
    st.sampled_from(list(ua.NodeClass)), expanded)
# a crawl's references: the few the mask asks for, nearly all alike
masked = st.builds(
    lambda rtype, target, cls: ua.ReferenceDescription(rtype, True, target, NodeClass=cls),
    st.sampled_from([ua.NodeId(40), ua.NodeId(47), ua.NodeId(35)]), node_ids,
    st.sampled_from([ua.NodeClass.Variable, ua.NodeClass.Object]))
results = st.builds(
    ua.BrowseResult,
    st.sampled_from([ua.StatusCode(0), ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown)]),
    st.one_of(st.none(), st.binary(max_size=6)),
    st.lists(st.one_of(references, masked), max_size=5))


def _browse_response(res: list[ua.BrowseResult], service: int = 0) -> bytes:
    r = ua.BrowseResponse()
    r.ResponseHeader.ServiceResult = ua.StatusCode(service)
    r.ResponseHeader.StringTable = ["a"]
    r.Results = res
    r.DiagnosticInfos = [ua.DiagnosticInfo(SymbolicId=1)]
    return bytes(struct_to_binary(r))


@settings(max_examples=300)
@given(st.lists(results, max_size=5))
def test_browse_results_are_what_asyncua_decodes(res: list[ua.BrowseResult]) -> None:
    data = _browse_response(res)
    assert browse_results(data) == struct_from_binary(ua.BrowseResponse, Buffer(data)).Results


@given(st.lists(results, max_size=4))
def test_browse_next_results_are_what_asyncua_decodes(res: list[ua.BrowseResult]) -> None:
    r = ua.BrowseNextResponse()
    r.Parameters.Results = res
    data = bytes(struct_to_binary(r))
    decoded = struct_from_binary(ua.BrowseNextResponse, Buffer(data)).Parameters.Results
    assert browse_results(data) == decoded


def test_node_ids_are_built_as_asyncua_builds_them() -> None:
    """The fast node ids carry the type asyncua's own decoder gives them (TwoByte,
    FourByte...), and equal ones decode to one object."""
    refs = [ua.ReferenceDescription(ua.NodeId(47), True, target) for target in (
        ua.NodeId(5, 0, ua.NodeIdType.TwoByte), ua.NodeId(300, 2, ua.NodeIdType.FourByte),
        ua.NodeId(70000, 2), ua.NodeId("Plant.V1", 3), ua.NodeId("Plant.V1", 3))]
    data = _browse_response([ua.BrowseResult(References=refs)])
    got = browse_results(data)[0].References
    want = struct_from_binary(ua.BrowseResponse, Buffer(data)).Results[0].References
    assert [r.NodeId.NodeIdType for r in got] == [r.NodeId.NodeIdType for r in want]
    assert [r.NodeId.to_string() for r in got] == [r.NodeId.to_string() for r in want]
    assert got[3].NodeId is got[4].NodeId and got[0].ReferenceTypeId is got[1].ReferenceTypeId


def test_a_bad_service_result_raises_as_asyncua_does() -> None:
    data = _browse_response([], ua.StatusCodes.BadTooManyOperations)
    with pytest.raises(ua.UaStatusCodeError) as exc:
        browse_results(data)
    assert exc.value.code == ua.StatusCodes.BadTooManyOperations


@given(st.lists(results, min_size=1, max_size=3), st.data())
def test_truncated_bytes_are_malformed(res: list[ua.BrowseResult], data: st.DataObject) -> None:
    whole = _browse_response(res)
    cut = data.draw(st.integers(1, len(whole) - 10))  # the DiagnosticInfos aside
    with pytest.raises(Malformed):
        browse_results(whole[:cut])


@given(st.binary(max_size=80))
def test_any_bytes_are_browse_results_or_refused(data: bytes) -> None:
    try:
        browse_results(data)
    except (Malformed, ua.UaStatusCodeError):
        pass


def test_a_node_class_outside_the_spec_is_malformed() -> None:
    ref = ua.ReferenceDescription(ua.NodeId(47), True, ua.NodeId(1, 2),
                                  NodeClass=ua.NodeClass.Variable)
    data = bytearray(_browse_response([ua.BrowseResult(References=[ref])]))
    at = data.rindex(bytes([ua.NodeClass.Variable, 0, 0, 0, 0, 0]))  # then a null TypeDefinition
    data[at] = 3
    with pytest.raises(Malformed):
        browse_results(bytes(data))


class _Answering:
    """The part of asyncua's UaSession that OffLoopSession uses: the answer's bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def _send_request(self, request: Any) -> Buffer:
        return Buffer(self.data)


def _odd_display_name(response: Any) -> bytes:
    """`response` encoded with an encoding mask bit the spec does not define in its one
    DisplayName: the walk refuses it, asyncua ignores the bit."""
    data = bytearray(struct_to_binary(response))
    at = data.rindex(b"\x02\x01\x00\x00\x00t")  # text only, "t"
    data[at] = 0x06
    return bytes(data)


def test_off_loop_browse_decodes_what_the_walk_refuses_with_asyncua() -> None:
    r = ua.BrowseResponse()
    r.Results = [ua.BrowseResult(References=[ua.ReferenceDescription(
        ua.NodeId(47), True, ua.NodeId("x", 2), DisplayName=ua.LocalizedText("t"),
        NodeClass=ua.NodeClass.Variable)])]
    data = _odd_display_name(r)
    with pytest.raises(Malformed):
        browse_results(data)
    session = OffLoopSession(_Answering(data))  # type: ignore[arg-type]
    assert asyncio.run(session.browse(ua.BrowseParameters())) == r.Results
    nxt = ua.BrowseNextResponse()
    nxt.Parameters.Results = r.Results
    session = OffLoopSession(_Answering(_odd_display_name(nxt)))  # type: ignore[arg-type]
    assert asyncio.run(session.browse_next(ua.BrowseNextParameters())) == r.Results
