"""A Read response's values taken straight from its bytes, with no asyncua objects.

TX wants each value as the link carries it (`OpcuaValue`: the Variant's own
bytes, the status code, the two timestamps as 100 ns ticks). asyncua decodes a
response into Python objects, and TX then encoded each Variant back to bytes:
for a crawl of 100,000 nodes, about a million DataValues built and taken apart
again, a third of the crawl's time. Here each DataValue is walked (its length
found from its encoding, nothing built) and its Variant's bytes are sliced out.

Anything the walk does not recognise (a malformed or unusual response) raises
`Malformed` (agent/opcua/wire.py), and the caller decodes the response with
asyncua as before.

```
response bytes ─► NodeId (type) ─► ResponseHeader (ServiceResult checked) ─► DataValue[]
                                                          each: mask ─► Variant (sliced) ─► status ─► ticks
```
"""

from __future__ import annotations

from typing import Any

from asyncua import ua
from asyncua.ua.ua_binary import variant_to_binary

from agent.opcua.wire import I32, I64, U32, Malformed, need, results_start, variant_end, walking

# (Variant bytes, or None when the DataValue has none; status code; source ticks; server ticks)
RawValue = tuple[bytes | None, int, int | None, int | None]


def read_values(data: bytes) -> list[RawValue]:
    """The results of a ReadResponse's bytes (its type id first, as asyncua hands them).
    Raises ua.UaStatusCodeError for a Bad service result, Malformed for the unexpected."""
    with walking():
        pos = results_start(data)
        (n,) = I32.unpack_from(data, pos)
        pos += 4
        out: list[RawValue] = []
        for _ in range(max(n, 0)):
            mask = data[pos]
            if mask & 0xC0:
                raise Malformed(f"data value mask {mask:#x}")
            pos += 1
            variant = None
            if mask & 0x01:
                end = variant_end(data, pos)
                variant = data[pos:end]
                pos = end
            status = source = server = None
            if mask & 0x02:
                (status,) = U32.unpack_from(data, pos)
                pos += 4
            if mask & 0x04:
                (source,) = I64.unpack_from(data, pos)
                pos += 8
            if mask & 0x10:
                pos += 2
            if mask & 0x08:
                (server,) = I64.unpack_from(data, pos)
                pos += 8
            if mask & 0x20:
                pos += 2
            need(data, pos)
            out.append((variant, status or 0, source, server))
        return out


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
