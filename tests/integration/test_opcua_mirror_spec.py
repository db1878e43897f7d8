"""The mirror answers as the OPC UA spec says, to two client stacks, for two plant stacks.

```
plant: asyncua (child process) | node-opcua (scripts/node-opcua/plant.mjs)
   ─► OpcuaSource ─► sans-IO link ─► OpcuaMirror ◄─ asyncua client  (this process)
                                                 ◄─ node-opcua client (scripts/node-opcua/client.mjs)
```

Issue #13, items 7 and 8, each shown with both clients against both plants:

- IndexRange on Read and on monitored items gives the sub-array (or the range's
  Bad code), not the whole array with Good.
- SourceTimestamp keeps its 100 ns digit (the plants set one: (value % 9) + 1).
- ServerTimestamp is a real time on a value that never changed since start-up.
- Writes and calls are refused per item (BadNotWritable, BadUserAccessDenied).
- HistoryRead: raw (with continuation points) and processed from the mirror's own
  history, BadHistoryOperationUnsupported where none is kept (and the access
  levels say which is which), the history surviving a mirror restart.

node-opcua must be installed (`scripts/setup.sh`): without it these fail, never skip.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua

from diode_tools.sim.mosquitto import free_port
from diode_tools.sim.node_opcua import NodeOpcuaPlant, node_client
from diode_tools.sim.plant_opcua import PlantProcess
from tests.integration.test_opcua_mirror import connected, gateway, run, until

pytestmark = pytest.mark.timeout(180)

A = ua.AttributeIds
Y2K_TICKS = 125_911_584_000_000_000  # 2000-01-01 in OPC UA ticks


@dataclass(frozen=True)
class Case:
    """One plant and the node ids each check uses on it (the same on the mirror)."""
    kind: str
    plant: Any
    counter: str        # Int32, changes; SourceTimestamp's 100 ns digit = (value % 9) + 1
    ints: str           # Int32[5]
    strings: str        # String[3]
    constant: str       # Double 1.5, never changes, writable on the plant
    obj: str            # the object holding...
    method: str         # ...a method
    history: tuple[str, ...]   # history_nodes
    historized: str     # a variable under history_nodes
    not_historized: str
    src_kw: dict[str, Any]

    def freeze(self) -> None:
        if self.kind == "asyncua":
            self.plant.pause()

    def thaw(self) -> None:
        if self.kind == "asyncua":
            self.plant.resume()


@pytest.fixture(scope="module")
def asyncua_plant() -> Iterator[PlantProcess]:
    p = PlantProcess(free_port(), variables=20, rate=100)
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="module")
def node_plant() -> Iterator[NodeOpcuaPlant]:
    with NodeOpcuaPlant() as p:
        yield p


@pytest.fixture(params=["asyncua", "node-opcua"])
def case(request: pytest.FixtureRequest) -> Case:
    if request.param == "asyncua":
        s = "ns=2;s=Special"
        return Case("asyncua", request.getfixturevalue("asyncua_plant"), f"{s}.Int32",
                    f"{s}.Int32Array", f"{s}.StringArray", f"{s}.Writable", s, f"{s}.Reset",
                    (s,), f"{s}.Int32", "ns=2;s=Area000.V00000", {})
    p = "ns=2;s=Plant"
    return Case("node-opcua", request.getfixturevalue("node_plant"), f"{p}.Counter",
                f"{p}.Int32Array", f"{p}.StringArray", f"{p}.Constant", p, f"{p}.Reset",
                (f"{p}.Counter", f"{p}.DoubleArray"), f"{p}.Counter", f"{p}.Constant",
                {"subtrees": (p,)})


def mirror_kw(case: Case, tmp: Path) -> dict[str, Any]:
    return {"history_nodes": case.history, "history_dir": tmp / "history",
            "history_max_values": 20}


# -- asyncua client, at the level of the services (its helpers drop what we check) -----


async def ua_read(c: Client, nid: str, rng: str | None = None,
                  attr: int = A.Value) -> ua.DataValue:
    rv = ua.ReadValueId(NodeId=ua.NodeId.from_string(nid), AttributeId=attr,  # type: ignore[arg-type]
                        IndexRange=rng)  # type: ignore[arg-type]
    params = ua.ReadParameters(NodesToRead=[rv], TimestampsToReturn=ua.TimestampsToReturn.Both)
    return (await c.uaclient.read(params))[0]


async def ua_subscribe(c: Client, nid: str, rng: str, seconds: float) -> list[ua.DataValue]:
    got: list[ua.DataValue] = []

    class Handler:
        def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
            got.append(data.monitored_item.Value)

    sub = await c.create_subscription(100, Handler())
    rv = ua.ReadValueId(NodeId=ua.NodeId.from_string(nid), AttributeId=A.Value,  # type: ignore[arg-type]
                        IndexRange=rng)  # type: ignore[arg-type]
    mp = ua.MonitoringParameters(ClientHandle=7, SamplingInterval=100, QueueSize=10,  # type: ignore[arg-type]
                                 DiscardOldest=True)
    res = await sub.create_monitored_items([ua.MonitoredItemCreateRequest(
        ItemToMonitor=rv, MonitoringMode=ua.MonitoringMode.Reporting, RequestedParameters=mp)])
    assert isinstance(res[0], int), res
    await asyncio.sleep(seconds)
    await sub.delete()
    return got


async def ua_history(c: Client, nid: str, details: Any, cp: bytes | None = None
                     ) -> ua.HistoryReadResult:
    params = ua.HistoryReadParameters(
        HistoryReadDetails=details, TimestampsToReturn=ua.TimestampsToReturn.Both,
        ReleaseContinuationPoints=False,  # asyncua's default is True: "give me nothing"
        NodesToRead=[ua.HistoryReadValueId(NodeId=ua.NodeId.from_string(nid),
                                           ContinuationPoint=cp)])  # type: ignore[arg-type]
    return (await c.uaclient.history_read(params))[0]


async def ua_history_all(c: Client, nid: str, details: Any) -> list[ua.DataValue]:
    """Every value, following the continuation points."""
    res = await ua_history(c, nid, details)
    assert res.StatusCode.is_good() and isinstance(res.HistoryData, ua.HistoryData), res
    values = list(res.HistoryData.DataValues)
    while res.ContinuationPoint:
        res = await ua_history(c, nid, details, res.ContinuationPoint)
        values += res.HistoryData.DataValues
    return values


def raw(start: datetime | None, end: datetime | None, n: int = 0) -> ua.ReadRawModifiedDetails:
    return ua.ReadRawModifiedDetails(IsReadModified=False, StartTime=start, EndTime=end,  # type: ignore[arg-type]
                                     NumValuesPerNode=n, ReturnBounds=False)  # type: ignore[arg-type]


async def node(url: str, ops: list[dict[str, Any]]) -> list[Any]:
    """node-opcua's client, in a thread: the mirror answers on this event loop."""
    return await asyncio.to_thread(node_client, url, ops)


def ticks(dt: datetime | None) -> int | None:
    return None if dt is None else ua.datetime_to_win_epoch(dt)


# -- item 8: reads as the spec says ------------------------------------------------------


def test_index_range_on_reads_and_monitored_items(case: Case, tmp_path: Path) -> None:
    async def main() -> None:
        async with gateway(case.plant, mirror_kw(case, tmp_path), **case.src_kw) as (_, url), \
                connected(url) as mc:
            case.freeze()
            try:
                await asyncio.sleep(1.0)  # the last changes cross the link
                ints = (await ua_read(mc, case.ints)).Value.Value
                strings = (await ua_read(mc, case.strings)).Value.Value
                assert len(ints) == 5 and len(strings) == 3
                # asyncua client
                dv = await ua_read(mc, case.ints, "1:3")
                assert dv.StatusCode.is_good() and dv.Value.Value == ints[1:4]
                dv = await ua_read(mc, case.ints, "4")
                assert dv.Value.Value == ints[4:5]
                dv = await ua_read(mc, case.strings, "1:2,0:1")
                assert dv.Value.Value == [s[0:2] for s in strings[1:3]]
                for rng, code in (("7:9", ua.StatusCodes.BadIndexRangeNoData),
                                  ("3:1", ua.StatusCodes.BadIndexRangeInvalid),
                                  ("x", ua.StatusCodes.BadIndexRangeInvalid)):
                    assert (await ua_read(mc, case.ints, rng)).StatusCode.value == code, rng
                assert (await ua_read(mc, case.constant, "0")).StatusCode.value == \
                    ua.StatusCodes.BadIndexRangeNoData  # a scalar has no elements
                seen = await ua_subscribe(mc, case.ints, "1:3", 1.0)
                assert seen and all(d.Value.Value == ints[1:4] for d in seen), seen
                # node-opcua client
                r = await node(url, [
                    {"op": "read", "nodeId": case.ints, "indexRange": "1:3"},
                    {"op": "read", "nodeId": case.strings, "indexRange": "1:2,0:1"},
                    {"op": "read", "nodeId": case.ints, "indexRange": "7:9"},
                    {"op": "read", "nodeId": case.ints, "indexRange": "3:1"},
                    {"op": "subscribe", "nodeId": case.ints, "indexRange": "1:3", "seconds": 1},
                ])
                assert (r[0]["status"], r[0]["value"]) == ("Good", ints[1:4])
                assert r[1]["value"] == [s[0:2] for s in strings[1:3]]
                assert r[2]["status"] == "BadIndexRangeNoData"
                assert r[3]["status"] == "BadIndexRangeInvalid"
                assert r[4]["values"] and all(v["value"] == ints[1:4] for v in r[4]["values"])
            finally:
                case.thaw()
            # A change outside the range notifies nothing; inside, the new sub-array.
            if case.kind == "asyncua":  # Int32Array is [k .. k+4], changing
                seen = await ua_subscribe(mc, case.ints, "0:1", 1.5)
                assert len(seen) >= 2 and all(len(d.Value.Value) == 2 for d in seen)
                assert all(b.Value.Value[0] > a.Value.Value[0] for a, b in zip(seen, seen[1:], strict=False))
    run(main)


def test_timestamps_keep_100ns_and_a_real_server_time(case: Case, tmp_path: Path) -> None:
    async def main() -> None:
        async with gateway(case.plant, mirror_kw(case, tmp_path), **case.src_kw) as (_, url), \
                connected(url) as mc:
            await until(lambda: ua_read(mc, case.counter), 10, "a counter value")
            for _ in range(5):  # several values, each with its own digit
                dv = await ua_read(mc, case.counter)
                t = ticks(dv.SourceTimestamp)
                assert t is not None and t % 10 == dv.Value.Value % 9 + 1, (t, dv)
                r = (await node(url, [{"op": "read", "nodeId": case.counter}]))[0]
                assert r["sourceTicks"] % 10 == r["value"] % 9 + 1, r
                await asyncio.sleep(0.15)
            # A value that never changed since start-up has a real ServerTimestamp.
            dv = await ua_read(mc, case.constant)
            assert dv.Value.Value == 1.5
            assert dv.ServerTimestamp is not None and ticks(dv.ServerTimestamp) > Y2K_TICKS, dv
            r = (await node(url, [{"op": "read", "nodeId": case.constant}]))[0]
            assert r["value"] == 1.5 and r["serverTicks"] is not None \
                and r["serverTicks"] > Y2K_TICKS, r
    run(main)


def test_writes_and_calls_refused_per_item(case: Case, tmp_path: Path) -> None:
    async def main() -> None:
        async with gateway(case.plant, mirror_kw(case, tmp_path), **case.src_kw) as (_, url):
            for user, password in ((None, None), ("admin", "secret")):
                async with connected(url, user, password) as mc:
                    wvs = []
                    for nid, variant in ((case.constant, ua.Variant(2.5, ua.VariantType.Double)),
                                         (case.counter, ua.Variant(1, ua.VariantType.Int32)),
                                         ("ns=2;s=NoSuchNode", ua.Variant(1.0))):
                        wvs.append(ua.WriteValue(NodeId=ua.NodeId.from_string(nid),
                                                 AttributeId=A.Value,  # type: ignore[arg-type]
                                                 Value=ua.DataValue(variant)))
                    codes = await mc.uaclient.write(ua.WriteParameters(NodesToWrite=wvs))
                    assert [c.value for c in codes] == [
                        ua.StatusCodes.BadNotWritable, ua.StatusCodes.BadNotWritable,
                        ua.StatusCodes.BadNodeIdUnknown], (user, codes)
                    calls = await mc.uaclient.call([ua.CallMethodRequest(
                        ObjectId=ua.NodeId.from_string(case.obj),
                        MethodId=ua.NodeId.from_string(case.method))] * 2)
                    assert [c.StatusCode.value for c in calls] == \
                        [ua.StatusCodes.BadUserAccessDenied] * 2, (user, calls)
                    with pytest.raises(ua.UaStatusCodeError) as exc:  # history stays read-only
                        await mc.uaclient.history_update(ua.HistoryUpdateParameters(
                            HistoryUpdateDetails=[ua.UpdateDataDetails(
                                NodeId=ua.NodeId.from_string(case.historized))]))
                    assert exc.value.code == ua.StatusCodes.BadUserAccessDenied
                    assert (await ua_read(mc, case.constant)).Value.Value == 1.5
            r = await node(url, [
                {"op": "write", "items": [
                    {"nodeId": case.constant, "dataType": "Double", "value": 2.5},
                    {"nodeId": case.counter, "dataType": "Int32", "value": 1}]},
                {"op": "call", "items": [{"objectId": case.obj, "methodId": case.method}] * 2},
                {"op": "read", "nodeId": case.constant},
            ])
            assert r[0] == ["BadNotWritable", "BadNotWritable"]
            assert r[1] == ["BadUserAccessDenied", "BadUserAccessDenied"]
            assert r[2]["value"] == 1.5
    run(main)


# -- item 7: history on the IT side -----------------------------------------------------


def test_history_raw_processed_unsupported_and_kept_across_restarts(case: Case,
                                                                    tmp_path: Path) -> None:
    url = f"opc.tcp://127.0.0.1:{free_port()}/diode/"
    kw = mirror_kw(case, tmp_path)
    start = datetime.now(UTC) - timedelta(seconds=1)

    async def first_run() -> list[int]:
        async with gateway(case.plant, kw, url, **case.src_kw) as (pipe, _), \
                connected(url) as mc:
            assert pipe.mirror.all_counters()["history_nodes"] >= len(case.history)
            # The access levels say which nodes answer a HistoryRead.
            for nid, kept in ((case.historized, True), (case.not_historized, False)):
                al = (await ua_read(mc, nid, attr=A.AccessLevel)).Value.Value
                hz = (await ua_read(mc, nid, attr=A.Historizing)).Value.Value
                assert bool(al & ua.AccessLevel.HistoryRead.mask) is kept and hz is kept, nid
            await asyncio.sleep(3.0)  # ~30 changes of the counter
            end = datetime.now(UTC)
            await asyncio.sleep(1.0)  # values stamped before `end` still crossing the link

            # raw, all at once (history_max_values is 20: following continuation points)
            values = await ua_history_all(mc, case.historized, raw(start, end))
            stamps = [ticks(d.SourceTimestamp) for d in values]
            assert len(values) >= 15, len(values)
            assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
            assert all(t is not None and t % 10 == d.Value.Value % 9 + 1  # 100 ns kept
                       for t, d in zip(stamps, values, strict=True))
            counts = [d.Value.Value for d in values]
            assert counts == sorted(counts)
            # page by page, 7 at a time: the same values, none twice
            paged: list[int] = []
            res = await ua_history(mc, case.historized, raw(start, end, 7))
            while True:
                assert len(res.HistoryData.DataValues) <= 7
                paged += [d.Value.Value for d in res.HistoryData.DataValues]
                if not res.ContinuationPoint:
                    break
                res = await ua_history(mc, case.historized, raw(start, end, 7),
                                       res.ContinuationPoint)
            assert paged == counts
            # newest first, when the start is after the end
            res = await ua_history(mc, case.historized, raw(end, start, 5))
            assert [d.Value.Value for d in res.HistoryData.DataValues] == counts[::-1][:5]
            # where no history is kept
            res = await ua_history(mc, case.not_historized, raw(start, end))
            assert res.StatusCode.value == ua.StatusCodes.BadHistoryOperationUnsupported

            # processed: Count per second sums to the raw count; Average of all is the mean
            proc = ua.ReadProcessedDetails(
                StartTime=start, EndTime=end, ProcessingInterval=1000.0,  # type: ignore[arg-type]
                AggregateType=[ua.NodeId(ua.ObjectIds.AggregateFunction_Count)])  # type: ignore[arg-type]
            res = await ua_history(mc, case.historized, proc)
            assert res.StatusCode.is_good()
            assert sum(d.Value.Value for d in res.HistoryData.DataValues
                       if d.StatusCode.is_good()) == len(counts)

            # the same through node-opcua
            r = await node(url, [
                {"op": "history", "nodeId": case.historized, "start": start.isoformat(),
                 "end": end.isoformat(), "follow": True},
                {"op": "history", "nodeId": case.historized, "start": start.isoformat(),
                 "end": end.isoformat(), "numValues": 7, "follow": True},
                {"op": "history", "nodeId": case.not_historized, "start": start.isoformat(),
                 "end": end.isoformat()},
                {"op": "history", "nodeId": case.historized, "start": start.isoformat(),
                 "end": end.isoformat(), "aggregate": "Average", "interval": 0},
                {"op": "history", "nodeId": case.historized, "start": start.isoformat(),
                 "end": end.isoformat(), "aggregate": "Count", "interval": 1000},
                {"op": "read", "nodeId": case.historized, "attribute": "Historizing"},
                {"op": "read", "nodeId": case.not_historized, "attribute": "AccessLevel"},
            ])
            assert [v["value"] for v in r[0]["values"]] == counts and r[0]["calls"] > 1
            assert [v["sourceTicks"] for v in r[0]["values"]] == stamps
            assert [v["value"] for v in r[1]["values"]] == counts and r[1]["calls"] > 1
            assert r[2]["status"] == "BadHistoryOperationUnsupported"
            assert r[3]["values"][0]["value"] == pytest.approx(sum(counts) / len(counts))
            assert sum(v["value"] for v in r[4]["values"] if v["status"].startswith("Good")) \
                == len(counts)
            assert r[5]["value"] is True
            assert r[6]["value"] & ua.AccessLevel.HistoryRead.mask == 0
            return counts

    async def second_run(before: list[int]) -> None:
        end = datetime.now(UTC)
        async with gateway(case.plant, kw, url, **case.src_kw) as _, connected(url) as mc:
            again = [d.Value.Value
                     for d in await ua_history_all(mc, case.historized, raw(start, end))]
            assert again[:len(before)] == before  # nothing lost across the restart

    counts = asyncio.run(asyncio.wait_for(first_run(), 120))
    time.sleep(0.5)
    asyncio.run(asyncio.wait_for(second_run(counts), 60))
