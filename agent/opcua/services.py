"""The mirror's answers to Read, Write, Call, HistoryRead and monitored items, as the spec says.

asyncua's server gets these wrong for a gateway (each fixed here, on one server's
own service objects, nothing global):

| service         | asyncua                               | the mirror                                 |
|-----------------|---------------------------------------|--------------------------------------------|
| Read            | ignores IndexRange (whole array, Good) | the sub-array, or BadIndexRange*          |
|                 | ignores TimestampsToReturn            | only the timestamps asked for              |
| monitored items | ignore IndexRange                     | notify the sub-array, only its changes; a  |
|                 |                                       | range that does not parse refuses the item |
| Write, Call     | one service-level BadUserAccessDenied | one result per item: BadNotWritable for a  |
|                 | (from our ruleset)                    | write, BadUserAccessDenied for a call      |
|                 |                                       | (but ConditionRefresh: mirror_events.py)   |
| HistoryRead     | Good with 0 values                    | agent/opcua/history_read.py                |

The refusals per item keep clients that read per-item results (most do) from
aborting a whole request; they never write: the server's own in-process session
(the mirror building its address space) is the only one whose writes go through.
"""

from __future__ import annotations

import copy
from typing import Any

from asyncua import ua
from asyncua.server.internal_server import InternalServer
from asyncua.server.monitored_item_service import MonitoredItemService

from agent.opcua import index_range
from agent.opcua.history_read import HistoryReader
from agent.opcua.ua import node_id, status

A = ua.AttributeIds
TS = ua.TimestampsToReturn
REFRESH_METHODS = frozenset(node_id(i) for i in (ua.ObjectIds.ConditionType_ConditionRefresh,
                                                   ua.ObjectIds.ConditionType_ConditionRefresh2))


def _timestamps(dv: ua.DataValue, which: int) -> ua.DataValue:
    if which == TS.Both:
        return dv
    keep_src = which == TS.Source
    keep_srv = which == TS.Server
    if (dv.SourceTimestamp is None or keep_src) and (dv.ServerTimestamp is None or keep_srv):
        return dv
    return ua.DataValue(dv.Value, dv.StatusCode,
                        SourceTimestamp=dv.SourceTimestamp if keep_src else None,
                        ServerTimestamp=dv.ServerTimestamp if keep_srv else None,
                        SourcePicoseconds=dv.SourcePicoseconds if keep_src else None,
                        ServerPicoseconds=dv.ServerPicoseconds if keep_srv else None)


def install(iserver: InternalServer, history: HistoryReader) -> None:
    """Replace this server's Read, Write, Call, HistoryRead and monitored-item handling."""
    aspace = iserver.aspace
    attrs = iserver.attribute_service
    internal_user = iserver.isession.user

    def read(params: ua.ReadParameters) -> list[ua.DataValue]:
        out = []
        for rv in params.NodesToRead:
            dv = aspace.read_attribute_value(rv.NodeId, rv.AttributeId)
            if rv.IndexRange:
                dv = index_range.apply(dv, rv.IndexRange)
            if rv.AttributeId == A.Value:
                dv = _timestamps(dv, params.TimestampsToReturn)
            out.append(dv)
        return out

    original_write = attrs.write

    async def write(params: ua.WriteParameters, user: Any = None) -> list[ua.StatusCode]:
        if user is internal_user:
            return await original_write(params, user)
        return [_write_refusal(aspace, wv) for wv in params.NodesToWrite]

    original_call = iserver.method_service.call

    async def call(params: list[ua.CallMethodRequest]) -> list[ua.CallMethodResult]:
        # ConditionRefresh re-sends the mirror's retained conditions to the caller's own
        # subscription: it reaches nothing upstream, so it is the one call let through.
        return [(await original_call([m]))[0] if m.MethodId in REFRESH_METHODS
                else _call_refusal(aspace, m) for m in params]

    setattr(attrs, "read", read)  # noqa: B010
    setattr(attrs, "write", write)  # noqa: B010
    setattr(iserver.method_service, "call", call)  # noqa: B010
    setattr(iserver.history_manager, "read_history", history.read_history)  # noqa: B010
    _install_monitored_ranges(iserver)


def _write_refusal(aspace: Any, wv: ua.WriteValue) -> ua.StatusCode:
    nd = aspace.get(wv.NodeId)
    if nd is None:
        return status(ua.StatusCodes.BadNodeIdUnknown)
    if wv.AttributeId not in nd.attributes:
        return status(ua.StatusCodes.BadAttributeIdInvalid)
    return status(ua.StatusCodes.BadNotWritable)  # AccessLevel and WriteMask say so


def _call_refusal(aspace: Any, m: ua.CallMethodRequest) -> ua.CallMethodResult:
    res = ua.CallMethodResult()
    if m.ObjectId not in aspace:
        res.StatusCode = status(ua.StatusCodes.BadNodeIdUnknown)
    elif m.MethodId not in aspace:
        res.StatusCode = status(ua.StatusCodes.BadMethodInvalid)
    else:
        res.StatusCode = status(ua.StatusCodes.BadUserAccessDenied)  # UserExecutable is false
    res.InputArgumentResults = []
    return res


def _install_monitored_ranges(iserver: InternalServer) -> None:
    """IndexRange on monitored items: refuse an item whose range does not parse, and cut
    every notification of the others to their range, before asyncua compares it with
    the last one (so a change outside the range notifies nothing)."""
    aspace = iserver.aspace
    subs = iserver.subscription_service
    original_add = aspace.add_datachange_callback
    original_create = subs.create_monitored_items

    def add_datachange_callback(nodeid: ua.NodeId, attr: ua.AttributeIds,
                                callback: Any) -> tuple[ua.StatusCode, int]:
        svc = getattr(callback, "__self__", None)
        if isinstance(svc, MonitoredItemService):
            callback = _ranged(svc)
        return original_add(nodeid, attr, callback)

    async def create_monitored_items(params: ua.CreateMonitoredItemsParameters
                                     ) -> list[ua.MonitoredItemCreateResult]:
        bad = {i for i, item in enumerate(params.ItemsToCreate)
               if not index_range.valid(item.ItemToMonitor.IndexRange)}
        if not bad:
            return await original_create(params)
        good = copy.copy(params)
        good.ItemsToCreate = [x for i, x in enumerate(params.ItemsToCreate) if i not in bad]
        done = iter(await original_create(good) if good.ItemsToCreate else [])
        out = []
        for i in range(len(params.ItemsToCreate)):
            if i in bad:
                out.append(ua.MonitoredItemCreateResult(
                    StatusCode=status(ua.StatusCodes.BadIndexRangeInvalid)))
            else:
                out.append(next(done))
        return out

    setattr(aspace, "add_datachange_callback", add_datachange_callback)  # noqa: B010
    setattr(subs, "create_monitored_items", create_monitored_items)  # noqa: B010


def _ranged(svc: MonitoredItemService) -> Any:
    """`svc`'s data-change callback, cutting each value to its item's IndexRange. Set on
    the instance too: asyncua sends an item's first value through
    `self.datachange_callback`, not through the address space's callbacks."""
    existing = svc.__dict__.get("datachange_callback")
    if existing is not None:
        return existing
    original = MonitoredItemService.datachange_callback.__get__(svc)

    async def ranged(handle: int, value: ua.DataValue, error: Any = None) -> None:
        # asyncua's own tables, as its datachange_callback reads them (asyncua 2.1)
        mid = svc._monitored_datachange.get(handle)
        mdata = svc._monitored_items.get(mid) if mid is not None else None
        rng = mdata.read_value_id.IndexRange if mdata and mdata.read_value_id else None
        if rng and error is None and value is not None:
            value = index_range.apply(value, rng)
        await original(handle, value, error)
    setattr(svc, "datachange_callback", ranged)  # noqa: B010
    return ranged
