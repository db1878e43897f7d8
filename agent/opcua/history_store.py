"""The mirror's on-disk history: the values that crossed the diode, bounded in time and bytes.

```
mirror applies a value ─► record() (memory, bounded) ─► flush() every second, one
                                                        transaction, in a worker thread
HistoryRead ─► read(node, start, end, limit) ─► flush() first, then one indexed query
```

One SQLite file (Python's own sqlite3: no new dependency, crash-safe, indexed):

    nodes(id INTEGER PRIMARY KEY, node TEXT UNIQUE)      node id strings, numbered
    vals(rowid, node, ts, src_missing, srv, status, value)
        UNIQUE(node, ts)  ts: the SourceTimestamp's ticks (100 ns since 1601), or the
                          ServerTimestamp's, or the arrival time's when the source sent
                          none (src_missing = 1); value: the Variant, OPC UA binary
    batches(first INTEGER PRIMARY KEY, wall INTEGER)     first rowid of each flush and
                                                         its wall-clock time (seconds)

- Written in batches: thousands of values per second arrive, so one transaction
  per flush (WAL, synchronous=NORMAL: no fsync per commit; a power cut loses at
  most the last flushes, never the file's consistency).
- The keyframes re-send the last values every few seconds: (node, ts) is unique
  and inserts of a pair already held are ignored, so they are not kept twice, a
  restart included.
- Time bound: rows are numbered in arrival order, so a flush older than
  `retention` is a rowid range, deleted at once. Byte bound: the pages in use
  (the file's pages less its free list; SQLite reuses freed pages, so the file
  stops growing) are kept under `max_bytes` by deleting the oldest rows.
- `pending` is bounded: if the disk cannot keep up, the newest values are dropped
  and counted (`history_dropped`), never blocking the mirror.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
FILE_NAME = "history.sqlite"
MAX_PENDING = 100_000  # about 16 MB: ten seconds of a busy mirror while the disk stalls
CHECK_EVERY = 10.0   # seconds between two checks of the bounds
_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (id INTEGER PRIMARY KEY, node TEXT UNIQUE NOT NULL);
CREATE TABLE IF NOT EXISTS vals (node INTEGER NOT NULL, ts INTEGER NOT NULL,
    src_missing INTEGER NOT NULL, srv INTEGER, status INTEGER NOT NULL, value BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS vals_node_ts ON vals (node, ts);
CREATE TABLE IF NOT EXISTS batches (first INTEGER PRIMARY KEY, wall INTEGER NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Row:
    ts: int            # the ticks the row is ordered by
    src: int | None    # SourceTimestamp ticks (None: the source sent none)
    srv: int | None    # ServerTimestamp ticks
    status: int
    value: bytes       # Variant, OPC UA binary


# (node id, ts, src_missing, srv, status, variant bytes)
_Pending = tuple[str, int, int, int | None, int, bytes]


class HistoryStore:
    """One mirror's history file. Every database call runs on one worker thread."""

    def __init__(self, directory: Path, retention: float, max_bytes: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(directory) / FILE_NAME
        self.retention = retention
        self.max_bytes = max_bytes
        self.clock = clock
        self.pending: list[_Pending] = []
        self.counters = dict.fromkeys(("history_recorded", "history_written",
                                       "history_dropped", "history_expired",
                                       "history_evicted", "history_flushes"), 0)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="opcua-history")
        self._db: sqlite3.Connection | None = None
        self._ids: dict[str, int] = {}
        self._checked = 0.0
        self._lock = asyncio.Lock()

    # -- lifecycle (on the worker thread) ---------------------------------------------

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        self._ids = dict(db.execute("SELECT node, id FROM nodes"))
        self._db = db
        self._enforce(force=True)

    async def close(self) -> None:
        try:
            await self.flush()
            await self._run(self._close)
        finally:
            self._pool.shutdown(wait=True)

    def _close(self) -> None:
        if self._db is not None:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
            self._db = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # -- writing ----------------------------------------------------------------------

    def record(self, node: str, value: bytes, status: int, src: int | None,
               srv: int | None, arrival: int) -> None:
        """Keep one value (memory only until the next flush)."""
        if len(self.pending) >= MAX_PENDING:
            self.counters["history_dropped"] += 1
            return
        ts = src if src is not None else (srv if srv is not None else arrival)
        self.pending.append((node, ts, int(src is None), srv, status, value))
        self.counters["history_recorded"] += 1

    async def flush(self) -> None:
        """Write what is pending in one transaction; check the bounds now and then."""
        async with self._lock:
            batch, self.pending = self.pending, []
            if batch or self.clock() - self._checked >= CHECK_EVERY:
                await self._run(self._write, batch)

    def _write(self, batch: list[_Pending]) -> None:
        db = self._db
        assert db is not None
        if batch:
            ids = self._ids
            new = {n for n, *_ in batch if n not in ids}
            db.execute("BEGIN")
            try:
                for n in new:  # `ids` holds every node of the file: these are new to it
                    ids[n] = int(db.execute("INSERT INTO nodes (node) VALUES (?)",
                                            (n,)).lastrowid or 0)
                first = (db.execute("SELECT max(rowid) FROM vals").fetchone()[0] or 0) + 1
                before = db.total_changes
                db.executemany("INSERT OR IGNORE INTO vals VALUES (?, ?, ?, ?, ?, ?)",
                               [(ids[n], ts, miss, srv, st, v)
                                for n, ts, miss, srv, st, v in batch])
                written = db.total_changes - before
                if written:
                    db.execute("INSERT OR REPLACE INTO batches VALUES (?, ?)",
                               (first, int(self.clock())))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                for n in new:
                    ids.pop(n, None)
                raise
            self.counters["history_written"] += written
            self.counters["history_flushes"] += 1
        self._enforce()

    def _enforce(self, force: bool = False) -> None:
        """Delete what is past the time bound, then the oldest rows past the byte bound."""
        now = self.clock()
        if not force and now - self._checked < CHECK_EVERY:
            return
        self._checked = now
        db = self._db
        assert db is not None
        keep = db.execute("SELECT min(first) FROM batches WHERE wall >= ?",
                          (int(now - self.retention),)).fetchone()[0]
        if keep is None:  # every batch is too old
            keep = (db.execute("SELECT max(rowid) FROM vals").fetchone()[0] or 0) + 1
        self.counters["history_expired"] += self._delete_below(keep)
        for _ in range(100):  # each round deletes at least 1/20 of the rows
            used = self.used_bytes()
            if used <= self.max_bytes:
                break
            lo, hi = db.execute("SELECT min(rowid), max(rowid) FROM vals").fetchone()
            if lo is None:
                break
            share = min(1.0, (used - self.max_bytes) / used + 0.05)
            self.counters["history_evicted"] += self._delete_below(
                lo + max(1, int((hi - lo + 1) * share)))

    def _delete_below(self, rowid: int) -> int:
        db = self._db
        assert db is not None
        db.execute("BEGIN")
        n = db.execute("DELETE FROM vals WHERE rowid < ?", (rowid,)).rowcount
        # the batch that holds `rowid` still starts the rows that are left
        db.execute("DELETE FROM batches WHERE first < (SELECT coalesce(max(first), 0) FROM "
                   "batches WHERE first <= ?)", (rowid,))
        db.execute("COMMIT")
        return max(n, 0)

    def used_bytes(self) -> int:
        db = self._db
        assert db is not None
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    # -- reading ----------------------------------------------------------------------

    async def read(self, node: str, start: int | None, end: int | None, limit: int,
                   reverse: bool) -> list[Row]:
        """Up to `limit` rows of `node` with start <= ts <= end (None: open), oldest first
        (newest first when `reverse`). Pending values are written first."""
        await self.flush()
        return await self._run(self._read, node, start, end, limit, reverse)

    def _read(self, node: str, start: int | None, end: int | None, limit: int,
              reverse: bool) -> list[Row]:
        db = self._db
        assert db is not None
        nid = self._ids.get(node)
        if nid is None:
            return []
        lo = -(1 << 63) if start is None else start
        hi = (1 << 63) - 1 if end is None else end
        order = "DESC" if reverse else "ASC"
        cur = db.execute(f"SELECT ts, src_missing, srv, status, value FROM vals WHERE node = ? "
                         f"AND ts BETWEEN ? AND ? ORDER BY ts {order} LIMIT ?",
                         (nid, lo, hi, limit))
        return [Row(ts, None if miss else ts, srv, st, bytes(v))
                for ts, miss, srv, st, v in cur]

    async def stats(self) -> dict[str, int]:
        rows = await self._run(lambda: self._db.execute(  # type: ignore[union-attr]
            "SELECT count(*) FROM vals").fetchone()[0])
        return {"history_rows": int(rows), "history_bytes": await self._run(self.used_bytes)}
