"""The few OPC UA binary encodings the Modbus source needs. Pure: no asyncua.

The mirror takes attribute values and live values as OPC UA binary Variants
(agent/opcua/model.py, agent/opcua/codec.py). A Modbus value is one of a
handful of built-in types, so TX encodes them here instead of importing
asyncua (about 18 MB) on a board that polls Modbus only. Layouts from OPC UA
Part 6, 5.2 (all little-endian)::

    Variant         encoding byte (type id, | 0x80 for an array) [Int32 length] body...
    String          Int32 byte length (-1: null), UTF-8 bytes
    NodeId          0x00 id:UInt8 (ns 0, id < 256) | 0x01 ns:UInt8 id:UInt16
                    | 0x02 ns:UInt16 id:UInt32 | 0x03 ns:UInt16 String
    QualifiedName   ns:UInt16 String
    LocalizedText   mask (0x01 locale, 0x02 text) [String locale] [String text]
    ExtensionObject NodeId (the encoding's id) 0x01 Int32 length body

tests/unit/modbus/test_uabin.py decodes every one of them with asyncua.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

# Built-in type ids (Part 6, 5.1.2): the Variant type and the DataType node id.
BOOLEAN, BYTE, INT16, UINT16, INT32, UINT32, FLOAT, DOUBLE, STRING = 1, 3, 4, 5, 6, 7, 10, 11, 12
NODE_ID, QUALIFIED_NAME, LOCALIZED_TEXT, EXTENSION_OBJECT = 17, 20, 21, 22
_SCALAR = {BOOLEAN: "<?", BYTE: "<B", INT16: "<h", UINT16: "<H", INT32: "<i", UINT32: "<I",
           FLOAT: "<f", DOUBLE: "<d"}
EU_INFORMATION = 887           # DataType of EngineeringUnits
EU_INFORMATION_BINARY = 889    # its DefaultBinary encoding
EU_NAMESPACE = "http://www.opcfoundation.org/UA/units/un/cefact"
NULL = b"\x00"                 # the null Variant


def string(s: str | None) -> bytes:
    if s is None:
        return b"\xff\xff\xff\xff"
    b = s.encode()
    return struct.pack("<i", len(b)) + b


def node_id(ident: int | str, ns: int = 0) -> bytes:
    if isinstance(ident, str):
        return b"\x03" + struct.pack("<H", ns) + string(ident)
    if ns == 0 and ident < 256:
        return bytes((0, ident))
    if ns < 256 and ident < 65536:
        return struct.pack("<BBH", 1, ns, ident)
    return struct.pack("<BHI", 2, ns, ident)


def qualified_name(name: str, ns: int = 0) -> bytes:
    return struct.pack("<H", ns) + string(name)


def localized_text(text: str) -> bytes:
    return b"\x02" + string(text)


def _body(vtype: int, v: Any) -> bytes:
    fmt = _SCALAR.get(vtype)
    if fmt is not None:
        return struct.pack(fmt, v)
    if vtype == STRING:
        return string(v)
    raise ValueError(f"no encoding for variant type {vtype}")


def variant(vtype: int, value: Any) -> bytes:
    """A scalar Variant of a built-in type; a list makes a one-dimensional array."""
    if isinstance(value, list | tuple):
        return bytes((vtype | 0x80,)) + struct.pack("<i", len(value)) + b"".join(
            _body(vtype, v) for v in value)
    return bytes((vtype,)) + _body(vtype, value)


def variant_node_id(ident: int | str, ns: int = 0) -> bytes:
    return bytes((NODE_ID,)) + node_id(ident, ns)


def variant_qualified_name(name: str, ns: int = 0) -> bytes:
    return bytes((QUALIFIED_NAME,)) + qualified_name(name, ns)


def variant_localized_text(text: str) -> bytes:
    return bytes((LOCALIZED_TEXT,)) + localized_text(text)


def variant_uint32_array(values: Sequence[int]) -> bytes:
    return variant(UINT32, list(values))


def variant_eu_information(display: str, unit_id: int = -1, description: str = "") -> bytes:
    """EngineeringUnits: an EUInformation structure. UnitId -1 is "no UNECE code"
    (Part 8, 5.6.3); clients show DisplayName."""
    body = (string(EU_NAMESPACE) + struct.pack("<i", unit_id) + localized_text(display)
            + localized_text(description or display))
    return (bytes((EXTENSION_OBJECT,)) + node_id(EU_INFORMATION_BINARY) + b"\x01"
            + struct.pack("<i", len(body)) + body)
