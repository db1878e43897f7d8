"""OPC UA's binary encoding (Part 6, 5.2) walked by length: where each encoded thing ends.

The crawl's responses are decoded from their bytes (agent/opcua/raw_values.py for
Read, agent/opcua/raw_browse.py for Browse) without asyncua's generic decoder,
which builds every object of the response field by field. These walkers find
where a NodeId, a String, a Variant... ends without building it; the decoders
slice and keep only what they need.

Anything a walker does not recognise raises `Malformed`, and the caller decodes
the response with asyncua as before: the fast path never decides what a response
means, it only skips the objects. An index past the end raises `IndexError` or
`struct.error`; `walking` turns both into `Malformed`.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Iterator

from asyncua import ua

I32 = struct.Struct("<i")
U32 = struct.Struct("<I")
I64 = struct.Struct("<q")

# builtin types of a fixed size (OPC UA Part 6, 5.1.2): id -> bytes
_FIXED = {1: 1, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 4, 8: 8, 9: 8, 10: 4, 11: 8, 13: 8, 14: 16,
          19: 4}
_NODE_ID_BODY = {0: 1, 1: 3, 2: 6, 4: 18}  # two-byte, four-byte, numeric, guid: fixed


class Malformed(ValueError):
    """Bytes the walk does not take for what they claim: decode them the slow way."""


def need(buf: bytes, end: int) -> int:
    if end > len(buf):
        raise Malformed("truncated")
    return end


def string_end(buf: bytes, pos: int) -> int:
    """After a String, ByteString or XmlElement (an Int32 length, -1 for null)."""
    (n,) = I32.unpack_from(buf, pos)
    return need(buf, pos + 4 + max(n, 0))


def node_id_end(buf: bytes, pos: int) -> int:
    kind = buf[pos]
    body = _NODE_ID_BODY.get(kind & 0x3F)
    if body is not None:
        end = need(buf, pos + 1 + body)
    elif kind & 0x3F in (3, 5):  # string, byte string: namespace, then the length-prefixed id
        end = string_end(buf, pos + 3)
    else:
        raise Malformed(f"node id encoding {kind:#x}")
    if kind & 0x80:  # ExpandedNodeId: namespace URI
        end = string_end(buf, end)
    if kind & 0x40:  # ExpandedNodeId: server index
        end = need(buf, end + 4)
    return end


def localized_text_end(buf: bytes, pos: int) -> int:
    mask = buf[pos]
    if mask & ~3:
        raise Malformed(f"localized text mask {mask:#x}")
    pos += 1
    if mask & 1:
        pos = string_end(buf, pos)
    if mask & 2:
        pos = string_end(buf, pos)
    return pos


def extension_object_end(buf: bytes, pos: int) -> int:
    pos = node_id_end(buf, pos)
    encoding = buf[need(buf, pos + 1) - 1]
    if encoding == 0:
        return pos + 1
    if encoding in (1, 2):
        return string_end(buf, pos + 1)
    raise Malformed(f"extension object encoding {encoding}")


def diagnostic_info_end(buf: bytes, pos: int, depth: int = 0) -> int:
    mask = buf[pos]
    if mask & 0x80 or depth > 8:
        raise Malformed("diagnostic info")
    pos += 1
    for bit in (0x01, 0x02, 0x08, 0x04):  # symbolic id, namespace, locale, localized text
        if mask & bit:
            pos = need(buf, pos + 4)
    if mask & 0x10:
        pos = string_end(buf, pos)
    if mask & 0x20:
        pos = need(buf, pos + 4)
    if mask & 0x40:
        pos = diagnostic_info_end(buf, pos, depth + 1)
    return need(buf, pos)


def _data_value(buf: bytes, pos: int, depth: int) -> int:
    mask = buf[pos]
    if mask & 0xC0:
        raise Malformed(f"data value mask {mask:#x}")
    pos += 1
    if mask & 0x01:
        pos = variant_end(buf, pos, depth + 1)
    for bit, size in ((0x02, 4), (0x04, 8), (0x10, 2), (0x08, 8), (0x20, 2)):
        if mask & bit:
            pos = need(buf, pos + size)
    return pos


def _element(vtype: int, buf: bytes, pos: int, depth: int) -> int:
    size = _FIXED.get(vtype)
    if size is not None:
        return need(buf, pos + size)
    if vtype == 23:
        return _data_value(buf, pos, depth)
    if vtype == 24:
        return variant_end(buf, pos, depth + 1)
    skip = _SKIP.get(vtype)
    if skip is None:
        raise Malformed(f"variant type {vtype}")
    return skip(buf, pos)


_SKIP: dict[int, Callable[[bytes, int], int]] = {
    12: string_end, 15: string_end, 16: string_end, 17: node_id_end, 18: node_id_end,
    20: lambda buf, pos: string_end(buf, pos + 2), 21: localized_text_end, 22: extension_object_end,
    25: diagnostic_info_end,
}


def variant_end(buf: bytes, pos: int, depth: int = 0) -> int:
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
        (n,) = I32.unpack_from(buf, pos)
        pos += 4
        size = _FIXED.get(vtype)
        if size is not None:
            pos = need(buf, pos + max(n, 0) * size)
        else:
            for _ in range(max(n, 0)):
                pos = _element(vtype, buf, pos, depth)
        if head & 0x40:
            (dims,) = I32.unpack_from(buf, pos)
            pos = need(buf, pos + 4 + 4 * max(dims, 0))
        return pos
    if head & 0x40:
        raise Malformed("array dimensions on a scalar")
    return _element(vtype, buf, pos, depth)


@contextlib.contextmanager
def walking() -> Iterator[None]:
    """Bytes that end too soon, whatever the walker was reading, are `Malformed`."""
    try:
        yield
    except (struct.error, IndexError) as exc:
        raise Malformed(str(exc)) from None


def results_start(data: bytes) -> int:
    """Where a response's body starts, after its type id and ResponseHeader (asyncua
    hands a response with its type id first). Raises ua.UaStatusCodeError for a Bad
    service result, as asyncua's `ServiceResult.check()` does."""
    pos = node_id_end(data, 0)
    (result,) = U32.unpack_from(data, pos + 12)  # after Timestamp, RequestHandle
    pos = diagnostic_info_end(data, pos + 16)
    (n,) = I32.unpack_from(data, pos)
    pos += 4
    for _ in range(max(n, 0)):
        pos = string_end(data, pos)  # the string table
    pos = extension_object_end(data, pos)  # the additional header
    if result & 0x80000000:
        raise ua.UaStatusCodeError(result)
    return pos
