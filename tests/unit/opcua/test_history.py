"""The mirror's history without a server: the store on a real SQLite file (batches,
duplicates, bounds in time and bytes, restarts), the HistoryRead answers over it
(raw, continuation points, processed, unsupported), which nodes keep a history,
and the config keys."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.ua.ua_binary import variant_to_binary

from agent.config_reader import Table
from agent.errors import ConfigError
from agent.opcua import config as opcua_config
from agent.opcua.history_read import HistoryReader
from agent.opcua.history_store import HistoryStore
from agent.opcua.model import ModelSnapshot, NodeRecord, historized
from agent.opcua.ua import node_id

T0 = 133_500_000_000_000_000  # ticks: 2024-01-17
SECOND = 10_000_000
NODE = "ns=2;s=Plant.Counter"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def run(fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(fn(), 60))


def int32(v: int) -> bytes:
    return variant_to_binary(ua.Variant(v, ua.VariantType.Int32))


def fill(store: HistoryStore, n: int, start: int = 0, node: str = NODE, step: int = SECOND
         ) -> None:
    for i in range(start, start + n):
        store.record(node, int32(i), 0, T0 + i * step + 7, T0 + i * step + 9, T0)


# -- the store ---------------------------------------------------------------------------


def test_values_batched_deduplicated_and_kept_across_a_restart(tmp_path: Path) -> None:
    async def main() -> None:
        store = HistoryStore(tmp_path, retention=86400, max_bytes=64 << 20)
        await store.open()
        fill(store, 1000)
        fill(store, 1000)  # a keyframe re-sends the same values: kept once
        await store.flush()
        assert store.counters["history_flushes"] == 1  # one transaction for 2000 values
        assert store.counters["history_written"] == 1000
        rows = await store.read(NODE, None, None, 10_000, False)
        assert [int(r.ts) for r in rows] == [T0 + i * SECOND + 7 for i in range(1000)]
        assert rows[0].src == rows[0].ts and rows[0].srv == T0 + 9
        fill(store, 5, 1000)  # pending at close: written by close()
        await store.close()

        again = HistoryStore(tmp_path, retention=86400, max_bytes=64 << 20)
        await again.open()
        rows = await again.read(NODE, T0 + 998 * SECOND, None, 100, False)
        assert len(rows) == 7 and rows[-1].ts == T0 + 1004 * SECOND + 7
        fill(again, 1)  # still a duplicate after the restart
        await again.flush()
        assert again.counters["history_written"] == 0
        # no SourceTimestamp: ordered by the ServerTimestamp, and said so
        again.record(NODE, int32(-1), 0, None, T0 - 5, T0)
        assert (await again.read(NODE, None, T0, 10, False))[0].src is None
        await again.close()
    run(main)


def test_time_and_byte_bounds(tmp_path: Path) -> None:
    async def main() -> None:
        clock = Clock()
        store = HistoryStore(tmp_path / "t", retention=3600, max_bytes=64 << 20, clock=clock)
        await store.open()
        fill(store, 100)
        await store.flush()
        clock.now += 1800
        fill(store, 100, 100)
        await store.flush()
        clock.now += 1801  # the first flush is now past the retention, the second is not
        await store.flush()
        rows = await store.read(NODE, None, None, 1000, False)
        assert [r.ts for r in rows] == [T0 + i * SECOND + 7 for i in range(100, 200)]
        assert store.counters["history_expired"] == 100
        await store.close()

        small = HistoryStore(tmp_path / "b", retention=86400 * 365, max_bytes=1 << 20,
                             clock=clock)
        await small.open()
        for k in range(20):  # 200,000 values: several MB unbounded
            fill(small, 10_000, k * 10_000, step=1)
            clock.now += 11
            await small.flush()
        used = (await small.stats())["history_bytes"]
        assert used <= 1 << 20, used
        rows = await small.read(NODE, None, None, 1_000_000, False)
        assert rows[-1].ts == T0 + 199_999 + 7  # the newest kept, the oldest evicted
        assert 0 < len(rows) < 200_000 and small.counters["history_evicted"] > 0
        assert (tmp_path / "b" / "history.sqlite").stat().st_size < 4 << 20
        await small.close()
    run(main)


# -- HistoryRead ---------------------------------------------------------------------------


def _params(details: Any, cp: bytes | None = None, nid: str = NODE,
            rng: str | None = None) -> ua.HistoryReadParameters:
    return ua.HistoryReadParameters(
        HistoryReadDetails=details, TimestampsToReturn=ua.TimestampsToReturn.Both,
        ReleaseContinuationPoints=False,
        NodesToRead=[ua.HistoryReadValueId(NodeId=ua.NodeId.from_string(nid),
                                           IndexRange=rng,  # type: ignore[arg-type]
                                           ContinuationPoint=cp)])  # type: ignore[arg-type]


def _raw(start: int | None, end: int | None, n: int = 0) -> ua.ReadRawModifiedDetails:
    when = [None if t is None else ua.win_epoch_to_datetime(t) for t in (start, end)]
    return ua.ReadRawModifiedDetails(IsReadModified=False, StartTime=when[0],  # type: ignore[arg-type]
                                     EndTime=when[1], NumValuesPerNode=n)  # type: ignore[arg-type]


def test_raw_reads_continuation_points_and_unsupported(tmp_path: Path) -> None:
    async def main() -> None:
        store = HistoryStore(tmp_path, retention=86400, max_bytes=64 << 20)
        await store.open()
        fill(store, 50)
        reader = HistoryReader(store, lambda n: n == NODE, max_values=20)
        end = T0 + 100 * SECOND

        async def values(details: Any) -> tuple[list[int], int]:
            out, calls, cp = [], 0, None
            while True:
                res = (await reader.read_history(_params(details, cp)))[0]
                assert res.StatusCode.is_good(), res
                calls += 1
                out += [d.Value.Value for d in res.HistoryData.DataValues]
                cp = res.ContinuationPoint
                if not cp:
                    return out, calls
        assert await values(_raw(T0, end)) == (list(range(50)), 3)      # 20 + 20 + 10
        assert await values(_raw(T0, end, 7)) == (list(range(50)), 8)   # 7 at a time
        assert await values(_raw(end, T0, 30)) == (list(range(49, -1, -1)), 3)  # newest first
        assert await values(_raw(None, end, 3)) == ([49, 48, 47, 46, 45, 44, 43, 42, 41, 40,
                                                     39, 38, 37, 36, 35, 34, 33, 32, 31, 30,
                                                     29, 28, 27, 26, 25, 24, 23, 22, 21, 20,
                                                     19, 18, 17, 16, 15, 14, 13, 12, 11, 10,
                                                     9, 8, 7, 6, 5, 4, 3, 2, 1, 0], 17)
        both_ends = T0 + 10 * SECOND + 7
        assert (await values(_raw(both_ends, both_ends)))[0] == [10]  # both ends included
        res = (await reader.read_history(_params(_raw(T0 + 60 * SECOND, end))))[0]
        assert res.StatusCode.value == ua.StatusCodes.GoodNoData
        for details, cp, nid, code in (
                (_raw(T0, end), None, "ns=2;s=Other", ua.StatusCodes.BadHistoryOperationUnsupported),
                (_raw(None, None), None, NODE, ua.StatusCodes.BadHistoryOperationInvalid),
                (_raw(T0, None), None, NODE, ua.StatusCodes.BadHistoryOperationInvalid),
                (_raw(T0, end), b"junk", NODE, ua.StatusCodes.BadContinuationPointInvalid),
                (ua.ReadRawModifiedDetails(IsReadModified=True), None, NODE,
                 ua.StatusCodes.BadHistoryOperationUnsupported),
                (ua.ReadAtTimeDetails(), None, NODE, ua.StatusCodes.BadHistoryOperationUnsupported),
                (ua.ReadEventDetails(), None, NODE, ua.StatusCodes.BadHistoryOperationUnsupported)):
            res = (await reader.read_history(_params(details, cp, nid)))[0]
            assert res.StatusCode.value == code, (details, nid)
        # a mirror that keeps no history at all
        none = HistoryReader(None, lambda n: True)
        res = (await none.read_history(_params(_raw(T0, end))))[0]
        assert res.StatusCode.value == ua.StatusCodes.BadHistoryOperationUnsupported
        await store.close()
    run(main)


def test_processed_aggregates(tmp_path: Path) -> None:
    async def main() -> None:
        store = HistoryStore(tmp_path, retention=86400, max_bytes=64 << 20)
        await store.open()
        fill(store, 10)  # 0..9, one per second
        store.record(NODE, int32(1000), ua.StatusCodes.BadNoCommunication, T0 + 5 * SECOND + 8,
                     None, T0)  # a Bad value: counted by no aggregate but Start/End
        reader = HistoryReader(store, lambda n: n == NODE, max_values=100)
        start, end = ua.win_epoch_to_datetime(T0), ua.win_epoch_to_datetime(T0 + 10 * SECOND)

        async def agg(name: str, interval_ms: float) -> list[Any]:
            details = ua.ReadProcessedDetails(
                StartTime=start, EndTime=end, ProcessingInterval=interval_ms,  # type: ignore[arg-type]
                AggregateType=[node_id(getattr(ua.ObjectIds, f"AggregateFunction_{name}"))])
            res = (await reader.read_history(_params(details)))[0]
            assert res.StatusCode.is_good(), (name, res)
            return [d.Value.Value if d.StatusCode.is_good() else d.StatusCode.name
                    for d in res.HistoryData.DataValues]
        assert await agg("Count", 5000) == [5, 5]
        assert await agg("Average", 5000) == [2.0, 7.0]
        assert await agg("Minimum", 0) == [0]
        assert await agg("Maximum", 2500) == [2, 4, 7, 9]
        assert await agg("Start", 5000) == [0, 5]
        assert await agg("End", 0) == [9]
        details = ua.ReadProcessedDetails(StartTime=start, EndTime=end, ProcessingInterval=0,  # type: ignore[arg-type]
                                          AggregateType=[node_id(ua.ObjectIds.AggregateFunction_TimeAverage)])
        res = (await reader.read_history(_params(details)))[0]
        assert res.StatusCode.value == ua.StatusCodes.BadAggregateNotSupported
        empty = ua.ReadProcessedDetails(
            StartTime=ua.win_epoch_to_datetime(T0 + 100 * SECOND),  # type: ignore[arg-type]
            EndTime=ua.win_epoch_to_datetime(T0 + 101 * SECOND), ProcessingInterval=0,  # type: ignore[arg-type]
            AggregateType=[node_id(ua.ObjectIds.AggregateFunction_Average)])
        res = (await reader.read_history(_params(empty)))[0]
        assert res.HistoryData.DataValues[0].StatusCode.value == ua.StatusCodes.BadNoData
        await store.close()
    run(main)


# -- which nodes, and the config ------------------------------------------------------------


def test_historized_nodes_follow_the_subtrees() -> None:
    v, o = ua.NodeClass.Variable, ua.NodeClass.Object
    snap = ModelSnapshot(("http://opcfoundation.org/UA/",), (
        NodeRecord("ns=2;s=Plant", o, "i=85"),
        NodeRecord("ns=2;s=A", o, "ns=2;s=Plant"),
        NodeRecord("ns=2;s=A.x", v, "ns=2;s=A"),
        NodeRecord("ns=2;s=A.x.EURange", v, "ns=2;s=A.x", attrs={13: b"\x00"}),  # static
        NodeRecord("ns=2;s=B", o, "ns=2;s=Plant"),
        NodeRecord("ns=2;s=B.y", v, "ns=2;s=B"),
        NodeRecord("ns=2;s=B.z", v, "ns=2;s=B"),
    ))
    assert historized(snap, ("ns=2;s=A", "ns=2;s=B.z")) == {"ns=2;s=A.x", "ns=2;s=B.z"}
    assert historized(snap, ("ns=2;s=Plant",)) == {"ns=2;s=A.x", "ns=2;s=B.y", "ns=2;s=B.z"}
    assert historized(snap, ()) == frozenset()


def _mirror(table: dict[str, Any], spooled: bool, tmp: Path) -> opcua_config.OpcuaMirrorConfig:
    return opcua_config.parse_mirror(Table(tmp / "rx.toml", "opcua", table), spooled)


def test_history_config(tmp_path: Path) -> None:
    cfg = _mirror({"name": "plant"}, False, tmp_path)
    assert cfg.history_nodes == () and cfg.history_max_bytes == 64 << 20
    cfg = _mirror({"name": "plant", "history_nodes": ["ns=2;s=Plant"],
                   "history_dir": "hist"}, False, tmp_path)
    assert cfg.history_nodes == ("ns=2;s=Plant",) and cfg.history_dir == tmp_path / "hist"
    assert _mirror({"name": "plant", "history_nodes": ["i=85"]}, True, tmp_path).history_dir \
        is None  # the agent puts it under [spool] dir
    (tmp_path / "afile").write_text("")
    for table, spooled, key, fix in (
            ({"history_nodes": ["i=85"]}, False, "history_dir", "history_dir = "),
            ({"history_nodes": ["Plant"]}, True, "history_nodes", "history_nodes = ["),
            ({"history_nodes": ["i=85"], "history_dir": "afile"}, True, "history_dir",
             "point history_dir at a folder"),
            ({"history_max_bytes": 1000}, True, "history_max_bytes", "history_max_bytes = ")):
        with pytest.raises(ConfigError) as exc:
            _mirror({"name": "plant", **table}, spooled, tmp_path)
        msg = str(exc.value)
        assert "rx.toml" in msg and f"[opcua] {key}" in msg and fix in msg, msg
