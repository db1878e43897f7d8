"""The spool: an encrypted, segmented, append-only log with an ack point.

```
producer ─► append(payload, key) ─► seal (AES-256-GCM) ─► write buffer ─► segment file
                                                         (one write() per batch)
            sync() / every fsync_interval_ms / always ─► fsync segment + dir ─► durable_seq
consumer ◄─ peek(n, after) ◄─ read + open records ◄──────── segment files
            ack(seq) ─► sync() ─► state file (ack point, manifest) ─► delete acked segments
```

Durability contract: `append()` returns the record's seq; the record is durable
once `durable_seq >= seq`, which `sync()` (or fsync="always" before append
returns) makes so. `ack(seq)` marks every record up to seq as done; the ack
point is durable once `durable_ack >= seq` (the next sync). After a crash the
spool resumes after the last durable ack: records acked but not yet durably
acked come back (at least once), durable unacked ones are all there.

Bounds: when a record would take the spool past `max_bytes`, space is freed
down to half a segment below the limit, in this order: acknowledged segments
are deleted; sealed segments are rewritten without records superseded by a
newer record with the same key (`dropped_conflated`); then the oldest segments
are dropped whole (`dropped_oldest`). Records with no key are events, records
with a key (an MQTT topic) are state, where only the latest per key matters.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import shutil
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Literal

from agent.spool.model import DAMAGE_KINDS, SpoolDamage, SpoolDamaged, SpoolError, SpoolRecord, SpoolStats
from agent.spool.recover import DAMAGED_DIR, Recovery, SegmentInfo, recover
from agent.spool.segment import (
    DATA,
    END,
    HEADER_SIZE,
    REC,
    REC_SIZE,
    TAG_SIZE,
    TRAILER_SIZE,
    Data,
    SegmentCodec,
    SegmentHeader,
    body_key,
    decode_body,
    encode_body,
    segment_name,
    walk,
)
from agent.spool.state import SpoolState, StateFile

FsyncMode = Literal["always", "interval", "never"]
LOCK_NAME = "lock"
_FLUSH_BYTES = 256 * 1024
_READ_BYTES = 256 * 1024
log = logging.getLogger("diode.spool")


class Spool:
    """A durable encrypted queue in `directory`; one process at a time (flock).

    fsync: "always" syncs inside every append() and ack(); "interval" at the first
    append/ack at least `fsync_interval_ms` after the first unsynced change (call
    `maybe_sync()` from a timer, at `sync_due()`, so a quiet spool syncs too);
    "never" hands data to the OS without fsync (survives kill -9, not power loss;
    for tests). `strict` raises SpoolDamaged on damage instead of reporting it.
    `clock` (monotonic) and `wall` (Unix time, stored in records, ms resolution) are
    injectable. Not thread-safe: use it from one thread (the agent's event loop); a
    sync blocks the caller for an fsync or three (well under a millisecond here).
    """

    def __init__(self, directory: Path | str, key: bytes, *, max_bytes: int = 64 << 20,
                 segment_bytes: int | None = None, fsync: FsyncMode = "interval",
                 fsync_interval_ms: float = 10.0, strict: bool = False,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        if len(key) != 32:
            raise SpoolError(f"spool key must be 32 bytes, got {len(key)}")
        if fsync not in ("always", "interval", "never"):
            raise SpoolError(f"fsync must be 'always', 'interval' or 'never', got {fsync!r}")
        if segment_bytes is None:
            segment_bytes = min(max(max_bytes // 16, 64 << 10), 8 << 20)
        if segment_bytes < 512 or max_bytes < 4 * segment_bytes:
            raise SpoolError(f"need segment_bytes >= 512 and max_bytes >= 4 * segment_bytes, got "
                             f"segment_bytes={segment_bytes}, max_bytes={max_bytes}")
        if fsync_interval_ms < 0:
            raise SpoolError(f"fsync_interval_ms must be >= 0, got {fsync_interval_ms}")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync_mode: FsyncMode = fsync
        self.strict = strict
        self._interval = fsync_interval_ms / 1000.0
        self._clock, self._wall = clock, wall
        self._key = key
        self.counters: dict[str, int] = {
            "appended": 0, "acked": 0, "syncs": 0, "fsyncs": 0, "state_writes": 0,
            "dropped_oldest": 0, "dropped_conflated": 0, "compactions": 0,
            "segments_deleted": 0, "torn_tail": 0, "damaged": 0,
            **{f"damage_{kind}": 0 for kind in DAMAGE_KINDS}}
        self.damage: list[SpoolDamage] = []
        self.durable_seq = 0
        self.durable_ack = 0

        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock_fd = _lock(self.directory)
        self._dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        self._closed = False
        self._fd: int | None = None            # write fd of the open segment
        self._rfd: tuple[int, int] | None = None  # (segment id, fd) being read
        self._buf = bytearray()
        self._segs: list[SegmentInfo] = []
        self._cur: SegmentInfo | None = None   # the open segment, last in _segs
        self._prev = 0                          # seq of the last record in _cur
        self._latest: dict[str, int] = {}
        self._fill = 0
        self._ack = 0
        self._next_seq = 1
        self._next_segment_id = 1
        self._spool_id = b""
        self._file_dirty = self._dir_dirty = self._state_dirty = False
        self._unsynced = False
        self._due = 0.0
        self._listed_deleting = False          # the state file names segments being deleted
        self._ahead: list[SpoolRecord] = []    # read, unacked records, in order
        self._cursor: tuple[int, int, int] | None = None  # (segment id, offset, prev seq)
        self._state_file = StateFile(self.directory, key, self._dir_fd, fsync != "never")
        try:
            self._open(recover(self.directory, key, self._state_file, self._wrong_key))
        except BaseException:
            self._close_fds()
            raise

    # --- public API -----------------------------------------------------------------

    @property
    def acked_seq(self) -> int:
        return self._ack

    @property
    def last_seq(self) -> int:
        """The seq of the last record appended (0 if none ever)."""
        return self._next_seq - 1

    def append(self, payload: bytes, key: str | None = None) -> int:
        """Seal and buffer one record; its seq. Durable once durable_seq >= seq."""
        self._check_open()
        body = encode_body(int(self._wall() * 1000), key, payload)
        size = REC_SIZE + len(body) + TAG_SIZE
        if HEADER_SIZE + size + TRAILER_SIZE > self.segment_bytes:
            raise ValueError(f"record of {size} bytes does not fit a segment of "
                             f"{self.segment_bytes} bytes; raise segment_bytes")
        cur = self._cur
        if cur is not None and cur.size + size + TRAILER_SIZE > self.segment_bytes:
            self._roll()
        if self._fill + size + HEADER_SIZE + TRAILER_SIZE > self.max_bytes:
            self._make_room(size + HEADER_SIZE + TRAILER_SIZE)
        cur = self._cur
        if cur is None:
            cur = self._new_segment()
        seq = self._next_seq
        sealed = cur.codec.seal(DATA, seq, self._prev, body)
        self._buf += sealed
        cur.size += size
        self._fill += size
        cur.add(seq)
        self._prev = seq
        self._next_seq = seq + 1
        self.counters["appended"] += 1
        if key is not None:
            self._index(key, seq)
        if len(self._buf) >= _FLUSH_BYTES:
            self._flush()
        self._changed()
        return seq

    def ack(self, seq: int) -> None:
        """Every record up to `seq` is done; durable once durable_ack >= seq."""
        self._check_open()
        if seq <= self._ack:
            return
        if seq >= self._next_seq:
            raise ValueError(f"ack({seq}): the last record appended is {self._next_seq - 1}")
        self.counters["acked"] += self._live_between(self._ack, seq)
        self._ack = seq
        ahead = self._ahead
        if ahead:
            del ahead[:bisect_right(ahead, seq, key=_seq_of)]
        self._state_dirty = True
        self._changed()

    def peek(self, n: int = 1, after: int | None = None) -> list[SpoolRecord]:
        """Up to n unacked records, oldest first (with seq > `after` if given)."""
        self._check_open()
        floor = self._ack if after is None or after < self._ack else after
        while True:
            # the index is taken anew after each read: what was read may lie below the floor
            ahead = self._ahead
            i = bisect_right(ahead, floor, key=_seq_of)
            if len(ahead) - i >= n or not self._read_more():
                return ahead[i:i + n]

    def __iter__(self) -> Iterator[SpoolRecord]:
        """The unacked records, oldest first; acking while iterating is fine."""
        after: int | None = None
        while batch := self.peek(256, after):
            yield from batch
            after = batch[-1].seq

    def sync(self) -> int:
        """Make every append and the ack point durable; delete acked segments. durable_seq."""
        self._check_open()
        done = [s for s in self._segs if s is not self._cur and s.end is not None
                and s.end - 1 <= self._ack]
        if done or self._state_dirty or self._listed_deleting:
            self._commit(done)
        else:
            self._sync_files()
        self.counters["syncs"] += 1
        self._unsynced = False
        return self.durable_seq

    def flush(self) -> None:
        """Hand buffered appends to the OS: they then survive a kill -9 of this process,
        but not a power cut (that takes sync())."""
        self._check_open()
        self._flush()

    def sync_due(self) -> float | None:
        """When (on `clock`) the batched sync is due; None when nothing awaits one."""
        if not self._unsynced or self.fsync_mode == "never":
            return None
        return self._due

    def maybe_sync(self, now: float | None = None) -> bool:
        """Sync if the batched sync is due (fsync="interval"); for a driver's timer."""
        due = self.sync_due()
        if due is None or (self._clock() if now is None else now) < due:
            return False
        self.sync()
        return True

    def stats(self) -> SpoolStats:
        oldest = self.peek(1)
        c = self.counters
        return SpoolStats(
            fill_bytes=self._fill, max_bytes=self.max_bytes,
            fill_fraction=self._fill / self.max_bytes,
            records=sum(s.live_after(self._ack) for s in self._segs),
            oldest_age_s=max(0.0, self._wall() - oldest[0].time) if oldest else None,
            segments=len(self._segs), last_seq=self._next_seq - 1, acked_seq=self._ack,
            durable_seq=self.durable_seq, durable_ack=self.durable_ack,
            dropped_oldest=c["dropped_oldest"], dropped_conflated=c["dropped_conflated"],
            torn_tail=c["torn_tail"], damaged=c["damaged"])

    def durable_sizes(self) -> dict[str, int]:
        """Segment file name -> bytes known to be on disk (fsynced): for crash tests."""
        return {s.path.name: s.synced for s in self._segs}

    def close(self, *, flush: bool = True) -> None:
        """Sync and release the spool; flush=False drops unwritten appends, as kill -9 does."""
        if self._closed:
            return
        if flush:
            self.sync()
        self._close_fds()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- opening ------------------------------------------------------------------

    def _open(self, rec: Recovery) -> None:
        if rec.damage and self.strict:
            raise SpoolDamaged(tuple(rec.damage))
        for d in rec.damage:
            self._report(d, during_open=True)
        self.counters["torn_tail"] += rec.torn
        if rec.torn:
            log.warning("%s: discarded %d torn write(s) at the end of the spool (crash during "
                        "append)", self.directory, rec.torn)
        for path in rec.remove:
            path.unlink(missing_ok=True)
        for path in rec.quarantine:
            os.replace(path, _evidence_path(self.directory, path.name))
        for path in rec.evidence:
            shutil.copyfile(path, _evidence_path(self.directory, path.name))
        for path, size in rec.truncate.items():
            os.truncate(path, size)
        self._spool_id = rec.spool_id or secrets.token_bytes(16)
        self._ack = rec.ack
        self._next_seq = rec.next_seq
        self._next_segment_id = rec.next_segment_id
        self._segs = rec.segments
        self._latest = rec.latest
        self._fill = sum(s.size for s in self._segs)
        for seg in rec.rewrite:
            if seg.end is None:
                seg.end = self._next_seq
            self._rewrite(seg, lambda seq, body: seq > self._ack)
        if self._segs and self._segs[-1].end is None:
            self._seal_at_open(self._segs[-1])
        if self.fsync_mode != "never":
            for seg in self._segs:
                fd = os.open(seg.path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        self._dir_dirty = True
        self.durable_seq = self._next_seq - 1
        self._commit([s for s in self._segs if s.end is not None and s.end - 1 <= self._ack])
        self.durable_ack = self._ack

    def _seal_at_open(self, seg: SegmentInfo) -> None:
        """Close the newest segment with its end record: it is never appended to again."""
        prev = seg.last if seg.last is not None else seg.base - 1
        trailer = seg.codec.seal(END, self._next_seq, prev, b"")
        with open(seg.path, "ab") as f:
            f.write(trailer)
        seg.end = self._next_seq
        seg.size += len(trailer)
        seg.synced = seg.size
        self._fill += len(trailer)

    def _wrong_key(self, message: str) -> SpoolError:
        return SpoolError(f"{message}. Fix: use the spool key this spool was created with, or "
                          f"decommission it with `diode wipe` and start empty")

    # --- writing ------------------------------------------------------------------

    def _new_segment(self) -> SegmentInfo:
        sid = self._next_segment_id
        self._next_segment_id += 1
        header = SegmentHeader(self._spool_id, sid, 0, self._next_seq, secrets.token_bytes(16))
        codec = SegmentCodec(self._key, header)
        path = self.directory / segment_name(sid)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        raw = codec.header_bytes()
        seg = SegmentInfo(codec, path, len(raw), 0)
        self._buf += raw
        self._fill += len(raw)
        self._segs.append(seg)
        self._cur = seg
        self._prev = self._next_seq - 1
        self._dir_dirty = self._state_dirty = True
        return seg

    def _roll(self) -> None:
        """Seal the open segment with its end record, make it durable, close it."""
        cur = self._cur
        assert cur is not None and self._fd is not None
        trailer = cur.codec.seal(END, self._next_seq, self._prev, b"")
        self._buf += trailer
        cur.size += len(trailer)
        self._fill += len(trailer)
        cur.end = self._next_seq
        self._sync_files()
        os.close(self._fd)
        self._fd = None
        self._cur = None

    def _flush(self) -> None:
        if self._buf and self._fd is not None:
            try:
                _write_all(self._fd, self._buf)
            finally:
                self._file_dirty = True

    def _sync_files(self) -> None:
        """Segment data and directory entries on disk: durable_seq = last_seq."""
        self._flush()
        if self.fsync_mode != "never":
            if self._file_dirty and self._fd is not None:
                os.fsync(self._fd)
                self.counters["fsyncs"] += 1
            if self._dir_dirty:
                os.fsync(self._dir_fd)
                self.counters["fsyncs"] += 1
        self._file_dirty = self._dir_dirty = False
        if self._cur is not None:
            self._cur.synced = self._cur.size
        self.durable_seq = self._next_seq - 1

    def _commit(self, delete: list[SegmentInfo]) -> None:
        """Data durable, then the state file (ack, manifest, what is deleted), then unlink.

        Segments unlinked by an earlier commit are surely gone once _sync_files has
        synced the directory, so this state file no longer lists them: a copy put back
        later is then reported as replayed rather than removed as a crash leftover."""
        self._sync_files()
        gone = {s.id for s in delete}
        self._state_file.write(SpoolState(
            spool_id=self._spool_id, ack_seq=self._ack, synced_seq=self.durable_seq,
            next_segment_id=self._next_segment_id,
            manifest={s.id: s.codec.header.generation for s in self._segs if s.id not in gone},
            deleting=frozenset(gone)))
        self.counters["state_writes"] += 1
        self._state_dirty = False
        self.durable_ack = self._ack
        self._listed_deleting = bool(delete)
        if not delete:
            return
        if self._rfd is not None and self._rfd[0] in gone:
            self._close_reader()
        for seg in delete:
            seg.path.unlink(missing_ok=True)
            self._fill -= seg.size
            self.counters["segments_deleted"] += 1
        self._segs = [s for s in self._segs if s.id not in gone]
        self._dir_dirty = True
        self._latest = {k: s for k, s in self._latest.items() if s > self._ack}

    def _changed(self) -> None:
        if not self._unsynced:
            self._unsynced = True
            self._due = self._clock() + self._interval
        mode = self.fsync_mode
        if mode == "always" or (mode == "interval" and self._clock() >= self._due):
            self.sync()

    # --- bounds -------------------------------------------------------------------

    def _index(self, key: str, seq: int) -> None:
        old = self._latest.get(key)
        self._latest[key] = seq
        if old is not None and old > self._ack:
            for seg in reversed(self._segs):
                if seg.base <= old:
                    seg.superseded += 1
                    break

    def _make_room(self, need: int) -> None:
        goal = self.max_bytes - self.segment_bytes // 2 - need

        def fits() -> bool:
            return self._fill <= goal

        acked = [s for s in self._segs if s is not self._cur and s.end is not None
                 and s.end - 1 <= self._ack]
        if acked:
            self._commit(acked)
        for seg in list(self._segs):
            if fits():
                return
            if seg is not self._cur and seg.superseded > 0 and seg in self._segs:
                self._conflate(seg)
        while not fits():
            sealed = [s for s in self._segs if s is not self._cur]
            if not sealed:
                if self._cur is None:
                    break
                self._roll()
                continue
            self._drop(sealed[0])
        self._reset_reader()

    def _conflate(self, seg: SegmentInfo) -> None:
        ack, latest = self._ack, self._latest
        dropped = 0

        def keep(seq: int, body: bytes) -> bool:
            nonlocal dropped
            if seq <= ack:
                return False
            key = body_key(body)
            if key is None or latest.get(key) == seq:
                return True
            dropped += 1
            return False

        self._rewrite(seg, keep)
        self.counters["dropped_conflated"] += dropped
        self.counters["compactions"] += 1

    def _drop(self, seg: SegmentInfo) -> None:
        assert seg.end is not None
        self.counters["dropped_oldest"] += seg.live_after(self._ack)
        self._ack = max(self._ack, seg.end - 1)
        self._commit([seg])

    def _rewrite(self, seg: SegmentInfo, keep: Callable[[int, bytes], bool]) -> None:
        """Rewrite a sealed segment with only the records `keep` accepts: a new generation
        and salt, the same id, base and end; atomically replaced (tmp, fsync, rename)."""
        assert seg.end is not None
        if self._rfd is not None and self._rfd[0] == seg.id:
            self._close_reader()
        old = seg.codec.header
        codec = SegmentCodec(self._key, SegmentHeader(self._spool_id, old.segment_id,
                                                      old.generation + 1, old.base_seq,
                                                      secrets.token_bytes(16)))
        raw = seg.path.read_bytes()[:seg.size]
        out = bytearray(codec.header_bytes())
        fresh = SegmentInfo(codec, seg.path, 0, 0, end=seg.end)
        prev = old.base_seq - 1
        for item in walk(seg.codec, raw, newest=False):
            if isinstance(item, Data) and keep(item.seq, item.body):
                out += codec.seal(DATA, item.seq, prev, item.body)
                fresh.add(item.seq)
                prev = item.seq
        out += codec.seal(END, seg.end, prev, b"")
        size = len(out)
        tmp = seg.path.with_name(seg.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, out)
            if self.fsync_mode != "never":
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, seg.path)
        self._fill += size - seg.size
        seg.codec, seg.size, seg.synced = codec, size, size
        seg.first, seg.last, seg.count, seg.seqs = fresh.first, fresh.last, fresh.count, fresh.seqs
        seg.superseded = 0
        self._dir_dirty = self._state_dirty = True
        self._reset_reader()

    def _live_between(self, lo: int, hi: int) -> int:
        return sum(s.live_after(lo) - s.live_after(hi) for s in self._segs)

    # --- reading ------------------------------------------------------------------

    def _reset_reader(self) -> None:
        self._ahead.clear()
        self._cursor = None
        self._close_reader()

    def _close_reader(self) -> None:
        if self._rfd is not None:
            os.close(self._rfd[1])
            self._rfd = None

    def _reader_fd(self, seg: SegmentInfo) -> int:
        if self._rfd is None or self._rfd[0] != seg.id:
            self._close_reader()
            self._rfd = (seg.id, os.open(seg.path, os.O_RDONLY))
        return self._rfd[1]

    def _find(self, sid: int) -> SegmentInfo | None:
        for seg in self._segs:
            if seg.id == sid:
                return seg
        return None

    def _read_more(self) -> bool:
        """Read the next records after the cursor into _ahead; False at the end of the log."""
        if not self._segs:
            return False
        seg = self._find(self._cursor[0]) if self._cursor is not None else None
        if seg is None or self._cursor is None:
            seg = self._segs[0]
            self._cursor = (seg.id, HEADER_SIZE, seg.base - 1)
            self._ahead.clear()
        _, off, prev = self._cursor
        if seg is self._cur:
            self._flush()
        if off >= seg.size:
            if seg.end is None:
                return False
            return self._next_segment(seg)
        fd = self._reader_fd(seg)
        data = os.pread(fd, min(_READ_BYTES, seg.size - off), off)
        if len(data) >= REC_SIZE:
            length = REC.unpack_from(data)[0]
            if REC_SIZE + length > len(data) and off + REC_SIZE + length <= seg.size:
                data = os.pread(fd, REC_SIZE + length, off)
        pos = 0
        n = len(data)
        ack, codec, ahead = self._ack, seg.codec, self._ahead
        while pos + REC_SIZE <= n:
            length, kind, seq, _crc = REC.unpack_from(data, pos)
            end = pos + REC_SIZE + length
            if end > n:
                break
            if kind == END:
                return self._next_segment(seg)
            if seq > ack:
                body = codec.open(data[pos:pos + REC_SIZE], kind, seq, prev,
                                  data[pos + REC_SIZE:end])
                if body is None:
                    return self._damaged_while_reading(seg, off + pos, seq)
                t, k, payload = decode_body(body)
                ahead.append(SpoolRecord(seq, payload, k, t))
            prev = seq
            pos = end
        if pos == 0:
            return self._damaged_while_reading(seg, off, None)
        self._cursor = (seg.id, off + pos, prev)
        return True

    def _next_segment(self, seg: SegmentInfo) -> bool:
        i = self._segs.index(seg)
        if i + 1 >= len(self._segs):
            self._cursor = (seg.id, seg.size, 0)
            return False
        nxt = self._segs[i + 1]
        self._cursor = (nxt.id, HEADER_SIZE, nxt.base - 1)
        return True

    def _damaged_while_reading(self, seg: SegmentInfo, offset: int, seq: int | None) -> bool:
        self._report(SpoolDamage("corrupt", seg.id, offset, seq, (
            f"segment {seg.path.name}: record at offset {offset} fails authentication while "
            "reading: the file was changed under the running spool; skipping the rest of it")))
        if seg.end is None:
            self._cursor = (seg.id, seg.size, 0)
            return False
        return self._next_segment(seg)

    # --- misc ---------------------------------------------------------------------

    def _report(self, damage: SpoolDamage, during_open: bool = False) -> None:
        self.damage.append(damage)
        self.counters["damaged"] += 1
        self.counters[f"damage_{damage.kind}"] += 1
        log.error("%s: spool damage (%s): %s", self.directory, damage.kind, damage.message)
        if self.strict and not during_open:
            raise SpoolDamaged((damage,))

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolError(f"{self.directory}: spool is closed")

    def _close_fds(self) -> None:
        self._closed = True
        self._buf.clear()
        self._close_reader()
        for name in ("_fd", "_dir_fd", "_lock_fd"):
            fd = getattr(self, name, None)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, None)


def _write_all(fd: int, buf: bytearray) -> None:
    """Write and consume `buf`; on an error (disk full) what was written is consumed too,
    so a retry does not write it twice."""
    view = memoryview(buf)
    done = 0
    try:
        while done < len(buf):
            done += os.write(fd, view[done:])
    finally:
        view.release()
        del buf[:done]


def _seq_of(record: SpoolRecord) -> int:
    return record.seq


def _lock(directory: Path) -> int:
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SpoolError(f"{directory}: spool is in use by another process (its lock is held). "
                         "Fix: stop the other agent using this spool directory") from None
    return fd


def _evidence_path(directory: Path, name: str) -> Path:
    folder = directory / DAMAGED_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / name
    n = 1
    while path.exists():
        path = folder / f"{name}.{n}"
        n += 1
    return path
