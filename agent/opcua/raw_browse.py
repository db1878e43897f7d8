"""A Browse (or BrowseNext) response decoded from its bytes, with asyncua's types
but not asyncua's generic decoder.

A crawl's Browse answers are the largest part of what TX decodes: a reference
per child and one per type definition, 20,000 references for a plant of 10,000
variables. asyncua decodes each reference field by field through a chain of
generic decoders, building a NodeId, a QualifiedName and a LocalizedText for
each, though nearly all of them repeat (the reference types, the type
definitions, and the names the crawl's mask leaves empty). Here each field is
walked to its end (agent/opcua/wire.py) and its bytes looked up among the ones
this response already had; only new bytes are decoded, by asyncua's own
decoder for that field's type, so the objects are the ones asyncua builds. A
node id is new once per target node.

```
response bytes ─► ResponseHeader (ServiceResult checked) ─► BrowseResult[]
    each: StatusCode, ContinuationPoint, ReferenceDescription[]
        each field: bytes ─► seen before? that object : asyncua's from_binary(field type)
```

Anything the walk does not recognise raises `Malformed`, and the caller decodes
the response with asyncua as before.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import from_binary, get_string_encoding

from agent.opcua.wire import (
    I32,
    Malformed,
    localized_text_end,
    node_id_end,
    results_start,
    string_end,
    walking,
)

_NUMERIC = struct.Struct("<HI")
_NEW = object.__new__
_KINDS = {0: ua.NodeIdType.TwoByte, 1: ua.NodeIdType.FourByte, 2: ua.NodeIdType.Numeric,
          3: ua.NodeIdType.String}


def _node_id(raw: bytes) -> ua.NodeId | None:
    """A numeric or string NodeId (all but a few of a crawl's targets), or None for
    asyncua's decoder. Built as asyncua builds it, without its __post_init__, which
    guesses and checks a type the encoding states (a third of the decode's time)."""
    kind = _KINDS.get(raw[0])
    if kind is None:
        return None
    ident: int | str
    if raw[0] == 0:
        ns, ident = 0, raw[1]
    elif raw[0] == 1:
        ns, ident = raw[1], raw[2] | raw[3] << 8
    elif raw[0] == 2:
        ns, ident = _NUMERIC.unpack_from(raw, 1)
    elif I32.unpack_from(raw, 3)[0] >= 0:
        ns, ident = raw[1] | raw[2] << 8, raw[7:].decode(get_string_encoding(), "surrogateescape")
    else:
        return None  # a null string: asyncua refuses it
    nid: Any = _NEW(ua.NodeId)
    nid.Identifier, nid.NamespaceIndex, nid.NodeIdType = ident, ns, kind
    return nid


def _decoder(uatype: Any) -> Callable[[bytes], Any]:
    """asyncua's decoder of `uatype`'s bytes (for node ids, the fast one first)."""
    def decode(raw: bytes) -> Any:
        try:
            return from_binary(uatype, Buffer(raw))
        except (ValueError, ua.UaError) as exc:  # e.g. a NodeClass the spec has not
            raise Malformed(f"{uatype.__name__}: {exc}") from None

    def node_id(raw: bytes) -> Any:
        nid = _node_id(raw)
        return decode(raw) if nid is None else nid
    return node_id if uatype in (ua.NodeId, ua.ExpandedNodeId) else decode


class _Seen:
    """One response's decoded fields by their bytes, one table per field (the same bytes
    mean different things as a NodeId and as a LocalizedText)."""

    def __init__(self, decode: Callable[[bytes], Any]) -> None:
        self._decode = decode
        self._objects: dict[bytes, Any] = {}

    def __call__(self, raw: bytes) -> Any:
        obj = self._objects.get(raw)
        if obj is None:
            obj = self._objects[raw] = self._decode(raw)
        return obj


def _tail_decoder() -> Callable[[bytes], tuple[Any, Any, Any, Any]]:
    """A reference's fields after its target (BrowseName, DisplayName, NodeClass,
    TypeDefinition): the same for nearly every reference the crawl's mask asks for."""
    name, text = _decoder(ua.QualifiedName), _decoder(ua.LocalizedText)
    node_class, type_def = _decoder(ua.NodeClass), _decoder(ua.ExpandedNodeId)

    def decode(raw: bytes) -> tuple[Any, Any, Any, Any]:
        a = string_end(raw, 2)
        b = localized_text_end(raw, a)
        return name(raw[:a]), text(raw[a:b]), node_class(raw[b:b + 4]), type_def(raw[b + 4:])
    return decode


def browse_results(data: bytes) -> list[ua.BrowseResult]:
    """The results of a BrowseResponse's or a BrowseNextResponse's bytes (the two are
    laid out alike; the type id first, as asyncua hands them). Raises
    ua.UaStatusCodeError for a Bad service result, Malformed for the unexpected."""
    reference_type = _decoder(ua.NodeId)
    heads = _Seen(lambda raw: (reference_type(raw[:-1]), raw[-1] != 0))  # type, IsForward
    targets, tails = _Seen(_decoder(ua.ExpandedNodeId)), _Seen(_tail_decoder())
    codes = _Seen(_decoder(ua.StatusCode))
    new_reference, new_result = ua.ReferenceDescription, ua.BrowseResult
    with walking():
        pos = results_start(data)
        (n,) = I32.unpack_from(data, pos)
        pos += 4
        out: list[ua.BrowseResult] = []
        for _ in range(max(n, 0)):
            (length,) = I32.unpack_from(data, pos + 4)
            code = codes(data[pos:pos + 4])
            end = string_end(data, pos + 4)
            continuation = data[pos + 8:end] if length >= 0 else None
            (count,) = I32.unpack_from(data, end)
            pos = end + 4
            refs: list[ua.ReferenceDescription] = []
            for _ in range(max(count, 0)):
                head = node_id_end(data, pos) + 1
                target = node_id_end(data, head)
                end = node_id_end(data, localized_text_end(data, string_end(data, target + 2)) + 4)
                rtype, forward = heads(data[pos:head])
                refs.append(new_reference(rtype, forward, targets(data[head:target]),
                                          *tails(data[target:end])))
                pos = end
            out.append(new_result(code, continuation, refs))
        return out
