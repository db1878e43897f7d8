"""Registers and bits -> values, as the register map says. Pure.

A register is 16 bits. An element of a 32- or 64-bit type spans 2 or 4
consecutive registers; `word_order` says which comes first (`big`: the most
significant, as Modbus itself orders bytes), `byte_order` the order of the two
bytes inside each register. The four common layouts of a float32 whose bytes
are A B C D (A most significant)::

    word big,    byte big     registers [AB, CD]   ("ABCD", the default)
    word little, byte big     registers [CD, AB]   ("CDAB", many PLCs)
    word big,    byte little  registers [BA, DC]   ("BADC")
    word little, byte little  registers [DC, BA]   ("DCBA")

Strings are `count` registers of two bytes each (ASCII or UTF-8), cut at the
first NUL. A scaled value is raw × scale + offset as a float, rounded to 15
significant digits so that 215 × 0.1 shows as 21.5.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from agent.modbus import uabin
from agent.modbus.config import WIDTHS, ModbusValue

_STRUCT = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f",
           "float64": ">d"}
_UA_TYPE = {"bits": uabin.BOOLEAN, "int16": uabin.INT16, "uint16": uabin.UINT16,
            "int32": uabin.INT32, "uint32": uabin.UINT32, "float32": uabin.FLOAT,
            "float64": uabin.DOUBLE, "string": uabin.STRING}


def ua_type(v: ModbusValue) -> int:
    """The OPC UA built-in type of the value as shown (a scaled value is a Double)."""
    return uabin.DOUBLE if v.scaled else _UA_TYPE[v.type]


def element_bytes(regs: Sequence[int], word_order: str, byte_order: str) -> bytes:
    """The big-endian bytes of one element from its registers."""
    if word_order == "little":
        regs = regs[::-1]
    out = b"".join(r.to_bytes(2, "big") for r in regs)
    if byte_order == "little":
        out = b"".join(out[i + 1:i + 2] + out[i:i + 1] for i in range(0, len(out), 2))
    return out


def shortest_float32(x: float) -> float:
    """The float with the fewest digits that is the same float32 (123.456, not the
    123.45600128173828 its double shows): what the device's own tools display."""
    exact = struct.pack(">f", x)
    for digits in range(6, 10):
        y = float(f"{x:.{digits}g}")
        if struct.pack(">f", y) == exact:
            return y
    return x


def decode(v: ModbusValue, raw: Sequence[int] | Sequence[bool]) -> Any:
    """The value from its `v.size` registers (or bits): a scalar, or a list when count > 1.
    ValueError when `raw` is too short."""
    if len(raw) < v.size:
        raise ValueError(f"{v.name}: {len(raw)} of {v.size} registers")
    if v.type == "bits":
        bits = [bool(b) for b in raw[:v.count]]
        return bits[0] if v.count == 1 else bits
    regs = [int(r) & 0xFFFF for r in raw[:v.size]]
    if v.type == "string":
        data = element_bytes(regs, "big", v.byte_order)
        return data.split(b"\x00", 1)[0].decode("utf-8", errors="replace")
    width = WIDTHS[v.type]
    fmt = _STRUCT[v.type]
    out: list[Any] = []
    for i in range(0, v.size, width):
        (x,) = struct.unpack(fmt, element_bytes(regs[i:i + width], v.word_order, v.byte_order))
        if v.scaled:
            x = float(f"{x * v.scale + v.offset:.15g}")
        elif v.type == "float32":
            x = shortest_float32(x)
        out.append(x)
    return out[0] if v.count == 1 else out


def encode_registers(v: ModbusValue, value: Any) -> list[int]:
    """The registers holding `value` (before scaling): the inverse of `decode`, for the
    simulators and tests. Bits are returned as 0/1."""
    items = value if isinstance(value, list) else [value]
    if v.type == "bits":
        return [int(bool(b)) for b in items]
    if v.type == "string":
        data = str(value).encode().ljust(v.count * 2, b"\x00")[:v.count * 2]
        if v.byte_order == "little":
            data = b"".join(data[i + 1:i + 2] + data[i:i + 1] for i in range(0, len(data), 2))
        return [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]
    fmt = _STRUCT[v.type]
    regs: list[int] = []
    for x in items:
        data = struct.pack(fmt, x)
        if v.byte_order == "little":
            data = b"".join(data[i + 1:i + 2] + data[i:i + 1] for i in range(0, len(data), 2))
        words = [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]
        regs += words[::-1] if v.word_order == "little" else words
    return regs
