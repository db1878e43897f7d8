"""Processed HistoryRead (ReadProcessedDetails, OPC UA Part 13) over the mirror's history.

A small, plain subset of Part 13's aggregates, over the Good raw values of each
interval [start + k * ProcessingInterval, start + (k + 1) * ProcessingInterval):

| aggregate | value                                  | timestamp         |
|-----------|----------------------------------------|-------------------|
| Count     | number of Good values (Int32)          | interval start    |
| Minimum   | smallest numeric value (its own type)  | interval start    |
| Maximum   | largest numeric value (its own type)   | interval start    |
| Average   | mean of the numeric values (Double)    | interval start    |
| Start     | first value, as it was stored          | its own timestamp |
| End       | last value, as it was stored           | its own timestamp |

A computed value has Good with the HistorianCalculated bit; an interval with no
usable value is BadNoData. Other aggregates: BadAggregateNotSupported. A
ProcessingInterval of 0 is one interval over the whole range. Only forward
ranges (StartTime before EndTime). At most `max_values` intervals and
`MAX_ROWS` raw values are processed per answer; the rest comes with a
ContinuationPoint (the next interval's start, 8 bytes).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from asyncua import ua

from agent.opcua.build import decode_variant
from agent.opcua.history_read import _result, ticks_of, to_datavalue
from agent.opcua.history_store import Row
from agent.opcua.ua import data_value, node_id, status

if TYPE_CHECKING:
    from agent.opcua.history_read import HistoryReader

_O = ua.ObjectIds
AGGREGATES = {node_id(i): name for i, name in (
    (_O.AggregateFunction_Count, "Count"), (_O.AggregateFunction_Minimum, "Minimum"),
    (_O.AggregateFunction_Maximum, "Maximum"), (_O.AggregateFunction_Average, "Average"),
    (_O.AggregateFunction_Start, "Start"), (_O.AggregateFunction_End, "End"))}
CALCULATED = ua.StatusCodes.Good | 0x0400 | 0x01  # InfoType DataValue, HistorianCalculated
MAX_ROWS = 200_000
_CP = struct.Struct(">q")


def _number(row: Row) -> tuple[float | int, ua.VariantType] | None:
    if not ua.StatusCode(row.status).is_good():  # type: ignore[arg-type]
        return None
    v = decode_variant(row.value)
    if v.is_array or isinstance(v.Value, bool) or not isinstance(v.Value, (int, float)):
        return None
    return v.Value, v.VariantType


def _compute(name: str, rows: list[Row], t0: int, ts_kind: int,
             rng: str | None) -> ua.DataValue:
    stamp = ua.win_epoch_to_datetime(t0)
    good = [r for r in rows if ua.StatusCode(r.status).is_good()]  # type: ignore[arg-type]
    if name in ("Start", "End"):
        if not rows:
            return data_value(None, status(ua.StatusCodes.BadNoData), stamp)
        return to_datavalue(rows[0] if name == "Start" else rows[-1], ts_kind, rng)
    if name == "Count":
        return data_value(ua.Variant(len(good), ua.VariantType.Int32), status(CALCULATED),
                          stamp, stamp)
    nums = [n for n in map(_number, rows) if n is not None]
    if not nums:
        return data_value(None, status(ua.StatusCodes.BadNoData), stamp)
    if name == "Average":
        variant = ua.Variant(sum(v for v, _ in nums) / len(nums), ua.VariantType.Double)
    else:
        pick = min if name == "Minimum" else max
        value, vtype = pick(nums, key=lambda n: n[0])
        variant = ua.Variant(value, vtype)
    return data_value(variant, status(CALCULATED), stamp, stamp)


async def read_processed(reader: HistoryReader, params: ua.HistoryReadParameters,
                         d: ua.ReadProcessedDetails, rv: ua.HistoryReadValueId
                         ) -> ua.HistoryReadResult:
    i = next(k for k, x in enumerate(params.NodesToRead) if x is rv)
    if len(d.AggregateType) != len(params.NodesToRead):
        return _result(ua.StatusCodes.BadAggregateListMismatch)
    name = AGGREGATES.get(d.AggregateType[i])
    if name is None:
        return _result(ua.StatusCodes.BadAggregateNotSupported)
    start, end = ticks_of(d.StartTime), ticks_of(d.EndTime)
    if start is None or end is None or start >= end or d.ProcessingInterval < 0:
        return _result(ua.StatusCodes.BadHistoryOperationUnsupported if start and end
                       and start > end else ua.StatusCodes.BadHistoryOperationInvalid)
    step = int(d.ProcessingInterval * 10_000) or (end - start)  # ms to ticks
    t0 = start
    if rv.ContinuationPoint:
        try:
            (t0,) = _CP.unpack(rv.ContinuationPoint)
        except struct.error:
            return _result(ua.StatusCodes.BadContinuationPointInvalid)
        if not start <= t0 < end:
            return _result(ua.StatusCodes.BadContinuationPointInvalid)
    last = min(end, t0 + step * reader.max_values)
    assert reader.store is not None
    rows = await reader.store.read(rv.NodeId.to_string(), t0, last - 1, MAX_ROWS + 1, False)
    if len(rows) > MAX_ROWS:  # stop at the interval the last full row count reaches
        last = max(t0 + step, start + (rows[MAX_ROWS].ts - start) // step * step)
        rows = [r for r in rows if r.ts < last]
    values: list[ua.DataValue] = []
    k = 0
    t = t0
    while t < last:
        hi = min(t + step, end)
        bucket: list[Row] = []
        while k < len(rows) and rows[k].ts < hi:
            bucket.append(rows[k])
            k += 1
        values.append(_compute(name, bucket, t, params.TimestampsToReturn, rv.IndexRange))
        t = hi
    res = _result(ua.StatusCodes.Good)
    res.HistoryData = ua.HistoryData(DataValues=values)
    res.ContinuationPoint = _CP.pack(last) if last < end else None
    return res
