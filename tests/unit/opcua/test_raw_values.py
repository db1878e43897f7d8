"""Values sliced from a Read response's bytes are what asyncua's decoder gives, for every
builtin type, scalar and array; anything else is refused as Malformed, never misread."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import struct_from_binary, struct_to_binary
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.opcua.raw_values import raw_of, read_values
from agent.opcua.wire import Malformed

VT = ua.VariantType
text = st.one_of(st.none(), st.text(max_size=12))
node_ids = st.one_of(
    st.integers(0, 255).map(lambda i: ua.NodeId(i, 0, ua.NodeIdType.TwoByte)),
    st.tuples(st.integers(0, 65535), st.integers(0, 65535)).map(lambda t: ua.NodeId(t[0], t[1])),
    st.tuples(st.text(max_size=10), st.integers(0, 9)).map(lambda t: ua.NodeId(t[0], t[1])),
    st.uuids().map(lambda u: ua.NodeId(u, 3)),
    st.binary(max_size=8).map(lambda b: ua.NodeId(b, 2, ua.NodeIdType.ByteString)),
)
stamps = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1),
                      timezones=st.just(UTC))
SCALARS: list[tuple[VT, st.SearchStrategy]] = [
    (VT.Boolean, st.booleans()), (VT.SByte, st.integers(-128, 127)),
    (VT.Byte, st.integers(0, 255)), (VT.Int16, st.integers(-2**15, 2**15 - 1)),
    (VT.UInt16, st.integers(0, 2**16 - 1)), (VT.Int32, st.integers(-2**31, 2**31 - 1)),
    (VT.UInt32, st.integers(0, 2**32 - 1)), (VT.Int64, st.integers(-2**63, 2**63 - 1)),
    (VT.UInt64, st.integers(0, 2**64 - 1)), (VT.Float, st.floats(width=32, allow_nan=False)),
    (VT.Double, st.floats(allow_nan=False)), (VT.String, text), (VT.DateTime, stamps),
    (VT.Guid, st.uuids()), (VT.ByteString, st.one_of(st.none(), st.binary(max_size=12))),
    (VT.NodeId, node_ids),
    (VT.StatusCode, st.sampled_from([ua.StatusCode(ua.StatusCodes.Good),
                                     ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown)])),
    (VT.QualifiedName, st.builds(ua.QualifiedName, text, st.integers(0, 9))),
    (VT.LocalizedText, st.builds(lambda t, loc: ua.LocalizedText(t, loc), text, text)),
    (VT.ExtensionObject, st.just(ua.Argument(Name="x", DataType=ua.NodeId(11)))),
]


def _variant(vtype: VT, values: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(values.map(lambda v: ua.Variant(v, vtype)),
                     st.lists(values, max_size=4).map(lambda v: ua.Variant(v, vtype, is_array=True)))


variants = st.one_of(st.just(ua.Variant()), *(_variant(t, s) for t, s in SCALARS))
data_values = st.builds(
    lambda v, code, src, srv: ua.DataValue(v, ua.StatusCode(code) if code is not None else None,
                                           src, srv),
    st.one_of(st.none(), variants),
    st.one_of(st.none(), st.sampled_from([0, ua.StatusCodes.Uncertain, ua.StatusCodes.BadNoData])),
    st.one_of(st.none(), stamps), st.one_of(st.none(), stamps))


def _response(results: list[ua.DataValue], service: int = 0) -> bytes:
    r = ua.ReadResponse()
    r.ResponseHeader.ServiceResult = ua.StatusCode(service)
    r.ResponseHeader.StringTable = ["a", "bc"]
    r.Results = results
    return bytes(struct_to_binary(r))


@settings(max_examples=300)
@given(st.lists(data_values, max_size=6))
def test_values_are_what_asyncua_decodes(results: list[ua.DataValue]) -> None:
    data = _response(results)
    decoded = struct_from_binary(ua.ReadResponse, Buffer(data)).Results
    assert read_values(data) == [raw_of(dv) for dv in decoded]


def test_a_bad_service_result_raises_as_asyncua_does() -> None:
    data = _response([ua.DataValue(ua.Variant(1.0))], ua.StatusCodes.BadTooManyOperations)
    with pytest.raises(ua.UaStatusCodeError) as exc:
        read_values(data)
    assert exc.value.code == ua.StatusCodes.BadTooManyOperations


def test_timestamps_keep_their_100_ns_ticks() -> None:
    data = bytearray(_response([ua.DataValue(ua.Variant(2.5),
                                             SourceTimestamp=datetime(2026, 1, 1))]))
    # the source timestamp's ticks are the last 8 bytes before the DiagnosticInfos' count:
    # made not a whole microsecond, which a datetime cannot hold
    at = len(data) - 4 - 8
    ticks = int.from_bytes(data[at:at + 8], "little") + 7
    data[at:at + 8] = ticks.to_bytes(8, "little")
    assert read_values(bytes(data))[0][2] == ticks


@given(st.lists(data_values, min_size=1, max_size=3), st.data())
def test_truncated_bytes_are_malformed(results: list[ua.DataValue], data: st.DataObject) -> None:
    whole = _response(results)
    cut = data.draw(st.integers(1, len(whole) - 5))  # the 4 bytes of DiagnosticInfos aside
    with pytest.raises(Malformed):
        read_values(whole[:cut])


@given(st.binary(max_size=64))
def test_any_bytes_are_read_or_refused(data: bytes) -> None:
    try:
        read_values(data)
    except (Malformed, ua.UaStatusCodeError):
        pass


def test_a_huge_announced_array_is_refused_without_allocating_it() -> None:
    data = bytearray(_response([ua.DataValue(ua.Variant([1.0], VT.Double, is_array=True))]))
    at = data.rindex(bytes([0x80 | VT.Double.value]))  # not a byte of the header's clock
    data[at + 1:at + 5] = (2**31 - 1).to_bytes(4, "little")
    with pytest.raises(Malformed):
        read_values(bytes(data))
