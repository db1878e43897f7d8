"""A Read response's values taken straight from its bytes, with no asyncua objects.

TX wants each value as the link carries it (`OpcuaValue`: the Variant's own
bytes, the status code, the two timestamps as 100 ns ticks). asyncua decodes a
response into Python objects, and TX then encoded each Variant back to bytes:
for a crawl of 100,000 nodes, about a million DataValues built and taken apart
again, a third of the crawl's time. Here each DataValue is walked (its length
found from its encoding, nothing built) and its Variant's bytes are sliced out.

Anything the walk does not recognise (a malformed or unusual response) raises
`Malformed`, and the caller decodes the response with asyncua as before: the
fast path never decides what a response means, it only skips the objects.

```
response bytes ─► NodeId (type) ─► ResponseHeader (ServiceResult checked) ─► DataValue[]
                                                          each: mask ─► Variant (sliced) ─► status ─► ticks
```
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from asyncua import ua
from asyncua.ua.ua_binary import variant_to_binary

# (Variant bytes, or None when the DataValue has none; status code; source ticks; server ticks)
RawValue = tuple[bytes | None, int, int | None, int | None]

_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")

# builtin types of a fixed size (OPC UA Part 6, 5.1.2): id -> bytes
_FIXED = {1: 1, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 4, 8: 8, 9: 8, 10: 4, 11: 8, 13: 8, 14: 16,
          19: 4}
_NODE_ID_BODY = {0: 1, 1: 3, 2: 6, 4: 18}  # two-byte, four-byte, numeric, guid: fixed


class Malformed(ValueError):
    """Bytes the walk does not take for what they claim: decode them the slow way."""


def _need(buf: bytes, end: int) -> int:
    if end > len(buf):
        raise Malformed("truncated")
    return end


def _string(buf: bytes, pos: int) -> int:
    """After a String, ByteString or XmlElement (an Int32 length, -1 for null)."""
    (n,) = _I32.unpack_from(buf, pos)
    return _need(buf, pos + 4 + max(n, 0))


def _node_id(buf: bytes, pos: int) -> int:
    kind = buf[pos]
    body = _NODE_ID_BODY.get(kind & 0x3F)
    if body is not None:
        end = _need(buf, pos + 1 + body)
    elif kind & 0x3F in (3, 5):  # string, byte string: namespace, then the length-prefixed id
        end = _string(buf, pos + 3)
    else:
        raise Malformed(f"node id encoding {kind:#x}")
    if kind & 0x80:  # ExpandedNodeId: namespace URI
        end = _string(buf, end)
    if kind & 0x40:  # ExpandedNodeId: server index
        end = _need(buf, end + 4)
    return end


def _localized_text(buf: bytes, pos: int) -> int:
    mask = buf[pos]
    if mask & ~3:
        raise Malformed(f"localized text mask {mask:#x}")
    pos += 1
    if mask & 1:
        pos = _string(buf, pos)
    if mask & 2:
        pos = _string(buf, pos)
    return pos


def _extension_object(buf: bytes, pos: int) -> int:
    pos = _node_id(buf, pos)
    encoding = buf[_need(buf, pos + 1) - 1]
    if encoding == 0:
        return pos + 1
    if encoding in (1, 2):
        return _string(buf, pos + 1)
    raise Malformed(f"extension object encoding {encoding}")


def _diagnostic_info(buf: bytes, pos: int, depth: int = 0) -> int:
    mask = buf[pos]
    if mask & 0x80 or depth > 8:
        raise Malformed("diagnostic info")
    pos += 1
    for bit in (0x01, 0x02, 0x08, 0x04):  # symbolic id, namespace, locale, localized text
        if mask & bit:
            pos = _need(buf, pos + 4)
    if mask & 0x10:
        pos = _string(buf, pos)
    if mask & 0x20:
        pos = _need(buf, pos + 4)
    if mask & 0x40:
        pos = _diagnostic_info(buf, pos, depth + 1)
    return _need(buf, pos)


def _data_value(buf: bytes, pos: int, depth: int) -> int:
    mask = buf[pos]
    if mask & 0xC0:
        raise Malformed(f"data value mask {mask:#x}")
    pos += 1
    if mask & 0x01:
        pos = _variant(buf, pos, depth + 1)
    for bit, size in ((0x02, 4), (0x04, 8), (0x10, 2), (0x08, 8), (0x20, 2)):
        if mask & bit:
            pos = _need(buf, pos + size)
    return pos


def _element(vtype: int, buf: bytes, pos: int, depth: int) -> int:
    size = _FIXED.get(vtype)
    if size is not None:
        return _need(buf, pos + size)
    if vtype == 23:
        return _data_value(buf, pos, depth)
    if vtype == 24:
        return _variant(buf, pos, depth + 1)
    skip = _SKIP.get(vtype)
    if skip is None:
        raise Malformed(f"variant type {vtype}")
    return skip(buf, pos)


_SKIP: dict[int, Callable[[bytes, int], int]] = {
    12: _string, 15: _string, 16: _string, 17: _node_id, 18: _node_id,
    20: lambda buf, pos: _string(buf, pos + 2), 21: _localized_text, 22: _extension_object,
    25: _diagnostic_info,
}


def _variant(buf: bytes, pos: int, depth: int = 0) -> int:
    if depth > 8:
        raise Malformed("variants nested too deep")
    head = buf[pos]
    vtype = head & 0x3F
    pos += 1
    if vtype == 0:
        if head & 0xC0:
            raise Malformed("null variant with array flags")
        return pos
    if vtype > 25:
        raise Malformed(f"variant type {vtype}")
    if head & 0x80:
        (n,) = _I32.unpack_from(buf, pos)
        pos += 4
        size = _FIXED.get(vtype)
        if size is not None:
            pos = _need(buf, pos + max(n, 0) * size)
        else:
            for _ in range(max(n, 0)):
                pos = _element(vtype, buf, pos, depth)
        if head & 0x40:
            (dims,) = _I32.unpack_from(buf, pos)
            pos = _need(buf, pos + 4 + 4 * max(dims, 0))
        return pos
    if head & 0x40:
        raise Malformed("array dimensions on a scalar")
    return _element(vtype, buf, pos, depth)


def read_values(data: bytes) -> list[RawValue]:
    """The results of a ReadResponse's bytes (its type id first, as asyncua hands them).
    Raises ua.UaStatusCodeError for a Bad service result, Malformed for the unexpected."""
    try:
        pos = _node_id(data, 0)
        (result,) = _U32.unpack_from(data, pos + 12)  # after Timestamp, RequestHandle
        pos = _diagnostic_info(data, pos + 16)
        (n,) = _I32.unpack_from(data, pos)
        pos += 4
        for _ in range(max(n, 0)):
            pos = _string(data, pos)  # the string table
        pos = _extension_object(data, pos)  # the additional header
        if result & 0x80000000:
            raise ua.UaStatusCodeError(result)
        (n,) = _I32.unpack_from(data, pos)
        pos += 4
        out: list[RawValue] = []
        for _ in range(max(n, 0)):
            mask = data[pos]
            if mask & 0xC0:
                raise Malformed(f"data value mask {mask:#x}")
            pos += 1
            variant = None
            if mask & 0x01:
                end = _variant(data, pos)
                variant = data[pos:end]
                pos = end
            status = source = server = None
            if mask & 0x02:
                (status,) = _U32.unpack_from(data, pos)
                pos += 4
            if mask & 0x04:
                (source,) = _I64.unpack_from(data, pos)
                pos += 8
            if mask & 0x10:
                pos += 2
            if mask & 0x08:
                (server,) = _I64.unpack_from(data, pos)
                pos += 8
            if mask & 0x20:
                pos += 2
            _need(data, pos)
            out.append((variant, status or 0, source, server))
        return out
    except (struct.error, IndexError) as exc:
        raise Malformed(str(exc)) from None


def raw_of(dv: ua.DataValue) -> RawValue:
    """A DataValue asyncua decoded, as `read_values` gives it."""
    return (None if dv.Value is None else variant_to_binary(dv.Value),
            dv.StatusCode.value if dv.StatusCode is not None else 0,
            None if dv.SourceTimestamp is None else ua.datetime_to_win_epoch(dv.SourceTimestamp),
            None if dv.ServerTimestamp is None else ua.datetime_to_win_epoch(dv.ServerTimestamp))


async def read_raw(session: Any, params: ua.ReadParameters) -> list[RawValue]:
    """A Read's values: straight from the bytes where the session can (OffLoopSession),
    else from asyncua's DataValues (a session a test made)."""
    fast = getattr(session, "read_raw", None)
    if fast is not None:
        values: list[RawValue] = await fast(params)
        return values
    return [raw_of(dv) for dv in await session.read(params)]
