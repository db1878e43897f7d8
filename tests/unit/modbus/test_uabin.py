"""The Modbus source's hand-written OPC UA binary encodings, decoded by asyncua."""

from __future__ import annotations

import math

import pytest
from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import variant_from_binary, variant_to_binary

from agent.modbus import uabin


def _decode(data: bytes) -> ua.Variant:
    buf = Buffer(data)
    v = variant_from_binary(buf)
    assert buf.read(0) == b"" and len(buf) == 0, "bytes left over"
    return v


@pytest.mark.parametrize(("vtype", "value", "ua_type"), [
    (uabin.BOOLEAN, True, ua.VariantType.Boolean),
    (uabin.INT16, -12345, ua.VariantType.Int16),
    (uabin.UINT16, 65535, ua.VariantType.UInt16),
    (uabin.INT32, -(1 << 31), ua.VariantType.Int32),
    (uabin.UINT32, (1 << 32) - 1, ua.VariantType.UInt32),
    (uabin.FLOAT, 1.5, ua.VariantType.Float),
    (uabin.DOUBLE, math.pi, ua.VariantType.Double),
    (uabin.STRING, "Kessel 3 °C", ua.VariantType.String),
    (uabin.BYTE, 1, ua.VariantType.Byte),
])
def test_scalars_and_arrays_decode_as_asyncua_encodes_them(vtype: int, value: object,
                                                           ua_type: ua.VariantType) -> None:
    for v in (value, [value, value]):
        ours = uabin.variant(vtype, v)
        assert ours == variant_to_binary(ua.Variant(v, ua_type))
        got = _decode(ours)
        assert got.VariantType == ua_type and got.Value == v


def test_node_ids_names_and_texts() -> None:
    for ident, ns in ((85, 0), (887, 0), (70000, 0), (12, 1), (70000, 300), ("dev/temp", 1)):
        got = _decode(uabin.variant_node_id(ident, ns)).Value
        assert got == ua.NodeId(ident, ns)
    assert _decode(uabin.variant_qualified_name("temp", 1)).Value == ua.QualifiedName("temp", 1)
    assert _decode(uabin.variant_localized_text("Temperatur")).Value == ua.LocalizedText(
        "Temperatur")
    dims = _decode(uabin.variant_uint32_array([3])).Value
    assert dims == [3]
    assert _decode(uabin.NULL).Value is None


def test_engineering_units_decode_to_an_eu_information() -> None:
    got = _decode(uabin.variant_eu_information("°C")).Value
    assert isinstance(got, ua.EUInformation)
    assert got.DisplayName == ua.LocalizedText("°C") and got.UnitId == -1
    assert got.NamespaceUri == uabin.EU_NAMESPACE
