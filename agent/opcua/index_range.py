"""IndexRange (OPC UA Part 4, 7.22 NumericRange): the part of an array a client asked for.

asyncua's server ignores IndexRange on reads and monitored items and returns the
whole array with Good, so a client reading ``3:5`` of a large array silently got
something else. The mirror applies it here (agent/opcua/services.py wires it).

Syntax: one range per dimension, separated by commas; each ``<index>`` or
``<low>:<high>`` with low < high, both inclusive. The last range of a String or
ByteString (scalar, or the elements of an array of them) takes a substring.

- A range that does not parse, or low >= high: BadIndexRangeInvalid.
- A range that starts past the end of the data, or a value that is not an array
  (nor a string): BadIndexRangeNoData. A high past the end is cut to the end.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from asyncua import ua

from agent.opcua.ua import status

Range = tuple[int, int]  # low, high (inclusive)
INVALID = ua.StatusCodes.BadIndexRangeInvalid
NO_DATA = ua.StatusCodes.BadIndexRangeNoData
_MAX_INDEX = 1 << 31


class IndexRangeError(ValueError):
    def __init__(self, code: int) -> None:
        super().__init__(ua.StatusCode(code).name)  # type: ignore[arg-type]
        self.code = code


def parse(text: str) -> tuple[Range, ...]:
    """The ranges of `text`; IndexRangeError(BadIndexRangeInvalid) if it is not one."""
    out = []
    for part in text.split(","):
        low_s, sep, high_s = part.partition(":")
        if not _digits(low_s) or (sep and not _digits(high_s)):
            raise IndexRangeError(INVALID)
        low = int(low_s)
        high = int(high_s) if sep else low
        if (sep and low >= high) or high >= _MAX_INDEX:
            raise IndexRangeError(INVALID)
        out.append((low, high))
    return tuple(out)


def _digits(s: str) -> bool:
    return s.isascii() and s.isdigit()


def _cut(value: Any, ranges: tuple[Range, ...]) -> Any:
    (low, high), rest = ranges[0], ranges[1:]
    if isinstance(value, (str, bytes)):
        if rest or low >= len(value):
            raise IndexRangeError(NO_DATA)
        return value[low:high + 1]
    if not isinstance(value, list) or low >= len(value):
        raise IndexRangeError(NO_DATA)
    part = value[low:high + 1]
    return [_cut(v, rest) for v in part] if rest else part


def _dims(value: Any, depth: int) -> list[int]:
    dims = []
    for _ in range(depth):
        if not isinstance(value, list):
            break
        dims.append(len(value))
        value = value[0] if value else None
    return dims


def cut_variant(variant: ua.Variant, ranges: tuple[Range, ...]) -> ua.Variant:
    """The part of `variant` the ranges name; IndexRangeError(BadIndexRangeNoData) if none."""
    value = variant.Value
    if not variant.is_array and not isinstance(value, (str, bytes)):
        raise IndexRangeError(NO_DATA)
    cut = _cut(value, ranges)
    if not variant.is_array:
        return ua.Variant(cut, variant.VariantType)
    dims = _dims(cut, len(variant.Dimensions)) if variant.Dimensions else None
    return ua.Variant(cut, variant.VariantType, dims, is_array=True)  # type: ignore[arg-type]


def apply(dv: ua.DataValue, text: str | None) -> ua.DataValue:
    """`dv` with only the part `text` asks for; a Bad DataValue (the range's code) if it
    cannot. No range, or a value with nothing in it (a Bad one): `dv` unchanged."""
    if not text:
        return dv
    try:
        ranges = parse(text)
        if dv.Value is None or dv.Value.Value is None:
            if dv.StatusCode is not None and not dv.StatusCode.is_good():
                return dv
            raise IndexRangeError(NO_DATA)
        return replace(dv, Value=cut_variant(dv.Value, ranges))
    except IndexRangeError as exc:
        return ua.DataValue(StatusCode=status(exc.code), SourceTimestamp=dv.SourceTimestamp,
                            ServerTimestamp=dv.ServerTimestamp)


def valid(text: str | None) -> bool:
    if not text:
        return True
    try:
        parse(text)
    except IndexRangeError:
        return False
    return True
