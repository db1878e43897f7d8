"""The mirror's HistoryRead service (OPC UA Part 11) over its `HistoryStore`.

asyncua's own answers Good with no values for a node that keeps no history. Here:

- A node that keeps no history (not in `history_nodes`, or not a mirrored
  variable): BadHistoryOperationUnsupported, as Part 11 says; its AccessLevel
  has no HistoryRead bit and its Historizing is false (agent/opcua/build.py).
- ReadRawModifiedDetails (raw): the values in [StartTime, EndTime], both ends
  included, oldest first, or newest first when StartTime is after EndTime; with
  one end unset, NumValuesPerNode values from the end that is set. At most
  `max_values` per node per answer (NumValuesPerNode if smaller); the rest comes
  with a ContinuationPoint. IsReadModified: unsupported (nothing is modified
  on a read-only mirror). ReturnBounds is not honoured (no bounding values).
- ReadProcessedDetails: agent/opcua/history_processed.py.
- ReadAtTime, events and annotations: BadHistoryOperationUnsupported.
- IndexRange cuts each value as a Read does; TimestampsToReturn Neither is
  BadTimestampsToReturnInvalid (Part 11: history needs a timestamp).

ContinuationPoint: 9 bytes, a direction byte and the ts of the next value
(big-endian). (node, ts) is unique in the store, so a read resumed from it
neither repeats nor skips a value, and the mirror holds no state per client.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from asyncua import ua

from agent.opcua import index_range
from agent.opcua.build import decode_variant
from agent.opcua.history_store import HistoryStore, Row
from agent.opcua.ua import data_value, status

log = logging.getLogger("diode.sink.opcua")
_CP = struct.Struct(">?q")
UNSUPPORTED = ua.StatusCodes.BadHistoryOperationUnsupported
TS = ua.TimestampsToReturn


def ticks_of(dt: datetime | None) -> int | None:
    """Ticks of a request's time; None when unset (null or 1601-01-01)."""
    if dt is None:
        return None
    t = ua.datetime_to_win_epoch(dt)
    return t if t > 0 else None


def to_datavalue(row: Row, timestamps: int, rng: str | None) -> ua.DataValue:
    src = ua.win_epoch_to_datetime(row.src) if row.src is not None else None
    srv = ua.win_epoch_to_datetime(row.srv) if row.srv is not None else None
    if timestamps == TS.Server:
        src = None
    elif timestamps == TS.Source:
        srv = None
    dv = data_value(decode_variant(row.value), status(row.status), src, srv)
    return index_range.apply(dv, rng)


def _result(code: int) -> ua.HistoryReadResult:
    return ua.HistoryReadResult(StatusCode=status(code))


class HistoryReader:
    """Answers HistoryRead requests for one mirror."""

    def __init__(self, store: HistoryStore | None, historized: Callable[[str], bool],
                 max_values: int = 10_000) -> None:
        self.store = store
        self.historized = historized
        self.max_values = max_values

    async def read_history(self, params: ua.HistoryReadParameters) -> list[ua.HistoryReadResult]:
        details = params.HistoryReadDetails
        out = []
        for rv in params.NodesToRead:
            try:
                out.append(await self._one(params, details, rv))
            except Exception:  # one broken request item must not fail the others
                log.exception("HistoryRead of %s failed", rv.NodeId.to_string())
                out.append(_result(ua.StatusCodes.BadInternalError))
        return out

    async def _one(self, params: ua.HistoryReadParameters, details: Any,
                   rv: ua.HistoryReadValueId) -> ua.HistoryReadResult:
        if self.store is None or not self.historized(rv.NodeId.to_string()):
            return _result(UNSUPPORTED)
        if params.TimestampsToReturn == TS.Neither:
            return _result(ua.StatusCodes.BadTimestampsToReturnInvalid)
        if not index_range.valid(rv.IndexRange):
            return _result(ua.StatusCodes.BadIndexRangeInvalid)
        if params.ReleaseContinuationPoints:
            return _result(ua.StatusCodes.Good)  # the points hold no state to release
        if isinstance(details, ua.ReadRawModifiedDetails) and not details.IsReadModified:
            return await self._raw(params, details, rv)
        if isinstance(details, ua.ReadProcessedDetails):
            from agent.opcua.history_processed import read_processed
            return await read_processed(self, params, details, rv)
        return _result(UNSUPPORTED)

    async def _raw(self, params: ua.HistoryReadParameters, d: ua.ReadRawModifiedDetails,
                   rv: ua.HistoryReadValueId) -> ua.HistoryReadResult:
        start, end, n = ticks_of(d.StartTime), ticks_of(d.EndTime), int(d.NumValuesPerNode)
        if start is None and end is None:
            return _result(ua.StatusCodes.BadHistoryOperationInvalid)
        if (start is None or end is None) and n == 0:
            return _result(ua.StatusCodes.BadHistoryOperationInvalid)
        # only an end: backwards from it; both: backwards when the start is after the end
        reverse = start is None or (end is not None and start > end)
        lo, hi = (min(start, end), max(start, end)) if start is not None and end is not None \
            else (start, end)
        if rv.ContinuationPoint:
            try:
                cp_reverse, nxt = _CP.unpack(rv.ContinuationPoint)
            except struct.error:
                return _result(ua.StatusCodes.BadContinuationPointInvalid)
            if cp_reverse != reverse:
                return _result(ua.StatusCodes.BadContinuationPointInvalid)
            if reverse:
                hi = nxt
            else:
                lo = nxt
        limit = min(n, self.max_values) if n else self.max_values
        assert self.store is not None
        rows = await self.store.read(rv.NodeId.to_string(), lo, hi, limit + 1, reverse)
        cp = None
        if len(rows) > limit:
            cp = _CP.pack(reverse, rows[limit].ts)
            rows = rows[:limit]
        res = _result(ua.StatusCodes.Good)
        res.ContinuationPoint = cp
        res.HistoryData = ua.HistoryData(
            DataValues=[to_datavalue(r, params.TimestampsToReturn, rv.IndexRange) for r in rows])
        if not rows:
            res = replace(res, StatusCode=status(ua.StatusCodes.GoodNoData))
        return res
