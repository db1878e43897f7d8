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
A drop never counts a record the consumer has already taken (`mark_taken`):
that one is on its way, so `dropped_oldest` is exactly what will never be
delivered. After a drop `acked_seq` has jumped past the dropped records, which
is how a consumer holding copies of them knows to skip them.

Full disk: a write that fails with ENOSPC or EDQUOT is never raised. The spool
keeps a small reserve file (`reserve`, RESERVE_BYTES, outside max_bytes) so
that there is always room for one more state file; on a full disk it
releases the reserve, bounds itself by what the disk holds (`limit_bytes`,
below max_bytes, with segments sized to it), drops its oldest segments down
to that (`dropped_oldest`; no conflation meanwhile, it needs room to rewrite)
and finishes the write where it stopped (`_write_all` consumed what was
written). Only what is written is ever changed: a drop writes no segment data,
just the state file, then unlinks. With nothing older left to drop, the open
segment and its buffer go too. If not even a state file fits, the drop is made
in memory (appends are then refused with `SpoolFull`, counted in
`dropped_full`) and reaches the disk once there is room. Once a second
(`maybe_sync`) it looks at the free space: the bound rises again as space
returns, the reserve is remade, and the episode ends (`disk_full`), each end
logged once.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import secrets
import shutil
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Literal

from agent.spool.model import (
    DAMAGE_KINDS,
    SpoolDamage,
    SpoolDamaged,
    SpoolError,
    SpoolFull,
    SpoolRecord,
    SpoolStats,
)
from agent.spool.recover import DAMAGED_DIR, Recovery, SegmentInfo, recover
from agent.spool.room import FULL_ERRNOS as _FULL
from agent.spool.room import MARGIN as _MARGIN
from agent.spool.room import RESERVE_BYTES, RESERVE_NAME, Room
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
    Torn,
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
_RETRY_S = 0.1                 # state-file retries while not even that fits
__all__ = ["LOCK_NAME", "RESERVE_BYTES", "RESERVE_NAME", "FsyncMode", "Spool"]
log = logging.getLogger("diode.spool")


class Spool:
    """A durable encrypted queue in `directory`; one process at a time (flock).

    fsync: "always" syncs inside every append() and ack(); "interval" at the first
    append/ack at least `fsync_interval_ms` after the first unsynced change (call
    `maybe_sync()` from a timer, at `sync_due()`, so a quiet spool syncs too);
    "never" hands data to the OS without fsync (survives kill -9, not power loss;
    for tests). `strict` raises SpoolDamaged on damage instead of reporting it.
    `reserve_bytes` is the size of the reserve file (0: none). `clock` (monotonic)
    and `wall` (Unix time, stored in records, ms resolution) are injectable. Not
    thread-safe: use it from one thread (the agent's event loop); a sync blocks the
    caller for an fsync or three (well under a millisecond here).
    """

    def __init__(self, directory: Path | str, key: bytes, *, max_bytes: int = 64 << 20,
                 segment_bytes: int | None = None, fsync: FsyncMode = "interval",
                 fsync_interval_ms: float = 10.0, strict: bool = False,
                 reserve_bytes: int = RESERVE_BYTES,
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
        if reserve_bytes < 0:
            raise SpoolError(f"reserve_bytes must be >= 0, got {reserve_bytes}")
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
            "dropped_oldest": 0, "dropped_conflated": 0, "dropped_full": 0, "compactions": 0,
            "segments_deleted": 0, "torn_tail": 0, "damaged": 0, "full_errors": 0,
            "disk_full_episodes": 0, **{f"damage_{kind}": 0 for kind in DAMAGE_KINDS}}
        self.damage: list[SpoolDamage] = []
        self.durable_seq = 0
        self.durable_ack = 0
        # Every record up to dropped_seq was acknowledged or dropped for room: a producer
        # waiting for one of them to be durable (to acknowledge it upstream) need not wait.
        self.dropped_seq = 0
        # Called with the seqs of records conflation removed from the middle of the log,
        # for a consumer that holds copies of them (drops move acked_seq instead).
        self.on_conflated: Callable[[list[int]], None] | None = None

        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock_fd = _lock(self.directory)
        except OSError as exc:
            if exc.errno not in _FULL:
                raise
            raise SpoolError(f"{self.directory}: cannot create the spool: {exc.strerror}. Fix: "
                             "free space on its file system") from None
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
        self._taken = 0                         # the consumer has taken every record up to it
        self._next_seq = 1
        self._next_segment_id = 1
        self._spool_id = b""
        self._file_dirty = self._dir_dirty = self._state_dirty = False
        self._unsynced = False
        self._due = 0.0
        self._listed_deleting = False          # the state file names segments being deleted
        self._ahead: list[SpoolRecord] = []    # read, unacked records, in order
        self._cursor: tuple[int, int, int] | None = None  # (segment id, offset, prev seq)
        # Full disk (see the module docstring, and room.py).
        self._room = Room(self.directory, self._dir_fd, max_bytes=max_bytes,
                          segment_bytes=segment_bytes, reserve_bytes=reserve_bytes,
                          clock=clock, counters=self.counters)
        self._stuck = False                     # a drop made in memory only: appends refused
        self._unsealed: SegmentInfo | None = None  # newest segment not sealed at open (full)
        self._retry_at = -math.inf
        self._state_file = StateFile(self.directory, key, self._dir_fd, fsync != "never")
        try:
            self._open(recover(self.directory, key, self._state_file, self._wrong_key))
            self._room.make()
            self._room.review(self._fill, len(self._segs), at_open=True, stuck=self._stuck)
        except BaseException:
            self._close_fds()
            raise

    # --- public API -----------------------------------------------------------------

    @property
    def acked_seq(self) -> int:
        """Every record up to it is done: acknowledged, or dropped for room."""
        return self._ack

    @property
    def last_seq(self) -> int:
        """The seq of the last record appended (0 if none ever)."""
        return self._next_seq - 1

    @property
    def disk_full(self) -> bool:
        """In a full-disk episode: from a write that met a full disk until there is room again."""
        return self._room.full

    @property
    def limit_bytes(self) -> int:
        """The bound in force: max_bytes, or less while the disk holds less."""
        return self._room.limit

    def append(self, payload: bytes, key: str | None = None) -> int:
        """Seal and buffer one record; its seq. Durable once durable_seq >= seq.

        SpoolFull when the disk is full and nothing is left to drop: the record is
        not kept (counted in dropped_full)."""
        self._check_open()
        body = encode_body(int(self._wall() * 1000), key, payload)
        size = REC_SIZE + len(body) + TAG_SIZE
        if HEADER_SIZE + size + TRAILER_SIZE > self.segment_bytes:
            raise ValueError(f"record of {size} bytes does not fit a segment of "
                             f"{self.segment_bytes} bytes; raise segment_bytes")
        if self._stuck and not self._retry_stuck():
            raise self._refuse()
        cur = self._cur
        if cur is not None and cur.count and cur.size + size + TRAILER_SIZE > self._room.segment:
            self._roll()
        if self._fill + size + HEADER_SIZE + TRAILER_SIZE > self._room.limit:
            self._make_room(size + HEADER_SIZE + TRAILER_SIZE)
        cur = self._cur
        if cur is None:
            cur = self._new_segment()
            if cur is None:
                raise self._refuse()
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
        if self._room.full:
            self._repay_reserve()
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

    def mark_taken(self, seq: int) -> None:
        """The consumer has taken every record up to `seq` (it may go back, e.g. to resend
        after a reconnect): a drop for room counts only records after it, since the ones
        taken are on their way."""
        self._taken = seq

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
        committed = True
        if done or self._state_dirty or self._listed_deleting:
            committed = self._commit(done)
        else:
            self._sync_files()
        self.counters["syncs"] += 1
        if committed:
            self._unsynced = False
        else:   # the state file did not fit: try again, but not at every append
            self._due = self._clock() + max(self._interval, _RETRY_S)
        if self._room.full:
            self._repay_reserve()
        self._check_disk()
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
        """Sync if the batched sync is due (fsync="interval"); for a driver's timer. Also
        where a spool bounded by a full disk notices that space came back."""
        due = self.sync_due()
        if due is None or (self._clock() if now is None else now) < due:
            if not self._closed:
                self._check_disk()
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
            dropped_full=c["dropped_full"], disk_full=self._room.full,
            disk_full_episodes=c["disk_full_episodes"], limit_bytes=self._room.limit,
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
            self._set_aside(path, move=True)
        for path in rec.evidence:
            self._set_aside(path, move=False)
        for path, size in rec.truncate.items():
            os.truncate(path, size)
        self._spool_id = rec.spool_id or secrets.token_bytes(16)
        self._ack = rec.ack
        self._taken = rec.ack
        self._next_seq = rec.next_seq
        self._next_segment_id = rec.next_segment_id
        self._segs = rec.segments
        self._latest = rec.latest
        self._fill = sum(s.size for s in self._segs)
        for seg in rec.rewrite:
            if seg.end is None:
                seg.end = self._next_seq
            if not self._rewrite(seg, lambda seq, body: seq > self._ack):
                log.error("%s: no room to repair segment %s (the disk is full); its damaged "
                          "records are skipped when read", self.directory, seg.path.name)
        if self._segs and self._segs[-1].end is None and not self._seal_at_open(self._segs[-1]):
            self._unsealed = self._segs[-1]     # sealed once there is room; appends wait
            self._stuck = True
        if self.fsync_mode != "never":
            for seg in self._segs:
                fd = os.open(seg.path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                except OSError as exc:
                    if exc.errno not in _FULL:
                        raise
                    self._room.note(exc, self._fill)
                finally:
                    os.close(fd)
        self._dir_dirty = True
        self.durable_seq = self._next_seq - 1
        if not self._commit([s for s in self._segs if s.end is not None
                             and s.end - 1 <= self._ack]):
            self._state_dirty = True
        self.durable_ack = self._ack

    def _seal_at_open(self, seg: SegmentInfo) -> bool:
        """Close the newest segment with its end record: it is never appended to again.
        False when the disk has no room even for that (nothing written then)."""
        prev = seg.last if seg.last is not None else seg.base - 1
        trailer = bytearray(seg.codec.seal(END, self._next_seq, prev, b""))
        size = len(trailer)
        fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND)
        try:
            while trailer:
                try:
                    _write_all(fd, trailer)
                except OSError as exc:
                    if exc.errno not in _FULL:
                        raise
                    self._room.note(exc, self._fill)
                    if not self._room.release():
                        os.ftruncate(fd, seg.size)
                        return False
        finally:
            os.close(fd)
        seg.end = self._next_seq
        seg.size += size
        seg.synced = seg.size
        self._fill += size
        return True

    def _set_aside(self, path: Path, *, move: bool) -> None:
        """A damaged file (move) or a copy of one about to be repaired, into damaged/."""
        dest: Path | None = None
        try:
            dest = _evidence_path(self.directory, path.name)
            if move:
                os.replace(path, dest)
            else:
                shutil.copyfile(path, dest)
        except OSError as exc:
            if exc.errno not in _FULL:
                raise
            self._room.note(exc, self._fill)
            if dest is not None and not move:
                dest.unlink(missing_ok=True)
            log.error("%s: no room to keep %s as evidence under %s/ (the disk is full)%s",
                      self.directory, path.name, DAMAGED_DIR,
                      "; left where it is" if move else "")

    def _wrong_key(self, message: str) -> SpoolError:
        return SpoolError(f"{message}. Fix: use the spool key this spool was created with, or "
                          f"decommission it with `diode wipe` and start empty")

    # --- writing ------------------------------------------------------------------

    def _new_segment(self) -> SegmentInfo | None:
        """A new open segment; None when the disk is full and nothing is left to drop."""
        if self._stuck:
            return None
        sid = self._next_segment_id
        path = self.directory / segment_name(sid)
        while True:
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                break
            except OSError as exc:
                if exc.errno not in _FULL:
                    raise
                if not self._free_space(exc):
                    return None
        self._next_segment_id = sid + 1
        header = SegmentHeader(self._spool_id, sid, 0, self._next_seq, secrets.token_bytes(16))
        codec = SegmentCodec(self._key, header)
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
        if self._cur is cur:    # not dropped for room meanwhile (_abandon closed it then)
            assert self._fd is not None
            os.close(self._fd)
            self._fd = None
            self._cur = None

    def _flush(self) -> None:
        """Write the buffer out. On a full disk: make room and write on where it stopped,
        or, with nothing left to drop, drop the open segment and its buffer too."""
        while self._buf and self._fd is not None:
            try:
                _write_all(self._fd, self._buf)
            except OSError as exc:
                self._file_dirty = True
                if exc.errno not in _FULL:
                    raise
                if not self._free_space(exc):
                    self._abandon()
            else:
                self._file_dirty = True

    def _sync_files(self) -> None:
        """Segment data and directory entries on disk: durable_seq = last_seq."""
        self._flush()
        if self.fsync_mode != "never":
            if self._file_dirty and self._fd is not None:
                self._fsync_open_segment()
            if self._dir_dirty:
                self._fsync_dir()       # on a full disk it may wait for the next sync
        else:
            self._dir_dirty = False
        self._file_dirty = False
        if self._cur is not None:
            self._cur.synced = self._cur.size
        self.durable_seq = self._next_seq - 1

    def _fsync_open_segment(self) -> None:
        assert self._fd is not None
        try:
            os.fsync(self._fd)
            self.counters["fsyncs"] += 1
            return
        except OSError as exc:
            if exc.errno not in _FULL:
                raise
            # Some file systems (network, copy-on-write) report a full disk only here.
            # Make room and ask once more; Linux may forget the failed pages after it
            # reported them, so a second failure drops the segment rather than trusting it.
            if self._free_space(exc) and self._fd is not None:
                try:
                    os.fsync(self._fd)
                    self.counters["fsyncs"] += 1
                    return
                except OSError as again:
                    if again.errno not in _FULL:
                        raise
            if self._cur is not None:
                self._abandon()

    def _fsync_dir(self) -> bool:
        try:
            os.fsync(self._dir_fd)
        except OSError as exc:
            if exc.errno not in _FULL:
                raise
            self._room.note(exc, self._fill)
            return False
        self.counters["fsyncs"] += 1
        self._dir_dirty = False
        return True

    def _commit(self, delete: list[SegmentInfo]) -> bool:
        """Data durable, then the state file (ack, manifest, what is deleted), then unlink.
        False when the disk had no room for the state file (nothing deleted then).

        Segments unlinked by an earlier commit are surely gone once _sync_files has
        synced the directory, so this state file no longer lists them: a copy put back
        later is then reported as replayed rather than removed as a crash leftover."""
        self._sync_files()
        delete = [s for s in delete if s in self._segs]   # a drop for room took the rest
        if not self._write_state(self._ack, {s.id for s in delete}):
            return False
        self.durable_ack = self._ack
        if self._unsealed is None:
            self._stuck = False
        self._remove(delete)
        return True

    def _write_state(self, ack: int, gone: set[int]) -> bool:
        """The state file with this ack point, without the segments `gone` (listed as being
        deleted). False when not even that fits on the disk, the reserve released.

        The open segment is listed only once its header is on disk: a state file that
        names a segment a crash then leaves without a header would be damage. Unlisted,
        and at or above next_segment_id, it is simply a new segment."""
        cur = self._cur
        hide = cur is not None and cur.id not in gone and cur.synced < HEADER_SIZE
        st = SpoolState(
            spool_id=self._spool_id, ack_seq=ack, synced_seq=self.durable_seq,
            next_segment_id=cur.id if hide and cur is not None else self._next_segment_id,
            manifest={s.id: s.codec.header.generation for s in self._segs
                      if s.id not in gone and not (hide and s is cur)},
            deleting=frozenset(gone))
        while True:
            try:
                self._state_file.write(st)
                break
            except OSError as exc:
                if exc.errno not in _FULL:
                    raise
                self._room.note(exc, self._fill)
                if not self._room.release():
                    return False
        self.counters["state_writes"] += 1
        self._state_dirty = hide
        return True

    def _remove(self, delete: list[SegmentInfo]) -> None:
        """Unlink segments the state file just listed as being deleted."""
        self._listed_deleting = bool(delete)
        if not delete:
            return
        gone = {s.id for s in delete}
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
        self._check_disk()      # a bound lowered by a full disk rises as space returns
        room = self._room
        if self._fill + need <= room.limit:
            return
        goal = room.limit - room.segment // 2 - need

        def fits() -> bool:
            return self._fill <= goal

        acked = [s for s in self._segs if s is not self._cur and s.end is not None
                 and s.end - 1 <= self._ack]
        if acked:
            self._commit(acked)
        for seg in list(self._segs):
            if fits() or room.full:     # no conflation on a full disk: it needs room
                break
            if seg is not self._cur and seg.superseded > 0 and seg in self._segs:
                self._conflate(seg)
        while not fits():
            sealed = self._sealed()
            if not sealed:
                if self._cur is None:
                    break
                self._roll()
                continue
            if not self._drop(sealed[0]):
                break
        self._reset_reader()

    def _conflate(self, seg: SegmentInfo) -> None:
        ack, latest, taken = self._ack, self._latest, self._taken
        removed: list[int] = []

        def keep(seq: int, body: bytes) -> bool:
            if seq <= ack:
                return False
            key = body_key(body)
            if key is None or latest.get(key) == seq:
                return True
            if seq > taken:     # one already taken is on its way: not a loss
                removed.append(seq)
            return False

        if not self._rewrite(seg, keep):
            return
        self.counters["dropped_conflated"] += len(removed)
        self.counters["compactions"] += 1
        if removed and self.on_conflated is not None:
            self.on_conflated(removed)

    def _drop(self, seg: SegmentInfo) -> bool:
        """Drop the oldest segment for room (its data durable first). False when the disk
        had no room for the state file."""
        assert seg.end is not None
        self._sync_files()
        if seg not in self._segs:   # a full disk met while syncing dropped it already
            return True
        return self._drop_now(self._segs[:self._segs.index(seg) + 1])

    def _drop_now(self, segs: list[SegmentInfo]) -> bool:
        """Drop these segments, the oldest ones: the ack point moves past them, the state
        file says so, then they are unlinked. No segment data is written, so this works
        on a full disk (the reserve keeps room for the state file). False if even that
        did not fit: then nothing changed."""
        end = segs[-1].end
        assert end is not None
        ack = max(self._ack, end - 1)
        self._sync_written()
        if not self._write_state(ack, {s.id for s in segs}):
            return False
        self._dropped(segs, ack)
        self.durable_ack = ack
        self._remove(segs)
        self._reset_reader()
        return True

    def _dropped(self, segs: list[SegmentInfo], ack: int) -> None:
        """Count what these segments lose (only records not taken yet) and move the ack."""
        floor = max(self._ack, self._taken)
        lost = sum(s.live_after(floor) for s in segs)
        self.counters["dropped_oldest"] += lost
        self._ack = ack
        self.dropped_seq = max(self.dropped_seq, ack)
        ahead = self._ahead
        if ahead:
            del ahead[:bisect_right(ahead, ack, key=_seq_of)]

    def _rewrite(self, seg: SegmentInfo, keep: Callable[[int, bytes], bool]) -> bool:
        """Rewrite a sealed segment with only the records `keep` accepts: a new generation
        and salt, the same id, base and end; atomically replaced (tmp, fsync, rename).
        False, with nothing changed, when the disk has no room for the copy."""
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
        except OSError as exc:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            if exc.errno not in _FULL:
                raise
            self._room.note(exc, self._fill)
            return False
        os.close(fd)
        os.replace(tmp, seg.path)
        self._fill += size - seg.size
        seg.codec, seg.size, seg.synced = codec, size, size
        seg.first, seg.last, seg.count, seg.seqs = fresh.first, fresh.last, fresh.count, fresh.seqs
        seg.superseded = 0
        self._dir_dirty = self._state_dirty = True
        self._reset_reader()
        return True

    def _sealed(self) -> list[SegmentInfo]:
        """The segments with their end record, oldest first: what a drop may take."""
        return [s for s in self._segs if s is not self._cur and s.end is not None]

    def _live_between(self, lo: int, hi: int) -> int:
        return sum(s.live_after(lo) - s.live_after(hi) for s in self._segs)

    # --- full disk ------------------------------------------------------------------

    def _free_space(self, exc: OSError) -> bool:
        """A write met a full disk: release the reserve (room for state files), bound the
        spool by what the disk holds, and drop the oldest sealed segments down to that, at
        least one, and until the pending write and a new reserve fit; then remake the
        reserve at once, before another writer (another channel's spool) takes the room.
        True when something was dropped."""
        room = self._room
        room.note(exc, self._fill)
        room.release()
        free = room.lower(self._fill - len(self._buf), len(self._segs))
        need = len(self._buf) + _MARGIN + room.reserve_bytes
        dropped = False
        while True:
            sealed = self._sealed()
            if not sealed or dropped and (free is None or free >= need):
                break
            goal = room.limit - room.segment // 2
            n = 1
            fill = self._fill - sealed[0].size
            while n < len(sealed) and fill > goal:
                fill -= sealed[n].size
                n += 1
            if not self._drop_now(sealed[:n]):
                break
            dropped = True
            free = room.free()
        if free is None or free >= need:
            room.make()
        return dropped

    def _repay_reserve(self) -> None:
        """After a state file took the reserve's room on a full disk: drop the oldest sealed
        segments until the reserve fits again, and remake it. Without it, the next drop
        for room might find no room for its state file."""
        room = self._room
        if not room.reserve_owed or self._stuck:
            return
        need = room.reserve_bytes + _MARGIN
        free = room.free()
        while free is not None and free < need:
            sealed = self._sealed()
            if not sealed or not self._drop_now(sealed[:1]):
                break
            free = room.free()
        if free is None or free >= need:
            room.make()

    def _abandon(self) -> None:
        """The open segment cannot be written and nothing older is left to drop: it goes
        too, with what its buffer held. If not even the state file fits, the drop is made
        in memory and appends are refused until it does (sync() retries)."""
        cur = self._cur
        assert cur is not None
        written = cur.size - len(self._buf)
        self._fill -= len(self._buf)
        self._buf.clear()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._cur = None
        self._file_dirty = False
        cur.size = written
        cur.synced = min(cur.synced, written)
        if cur.end is None:
            cur.end = self._next_seq
        segs = list(self._segs)
        if self._drop_now(segs):
            self._repay_reserve()
            return
        self._tidy_abandoned(cur)
        self._dropped(segs, cur.end - 1)
        self._latest = {}
        self._state_dirty = True
        self._stuck = True
        self._reset_reader()
        log.error("%s: the disk is full and has no room left even for the spool's state "
                  "file: every record it held is dropped (%d so far) and new ones are refused "
                  "until there is room. Fix: free space on its file system", self.directory,
                  self.counters["dropped_oldest"])

    def _tidy_abandoned(self, seg: SegmentInfo) -> None:
        """An abandoned segment that stays until the state file fits: no state file ever
        listed it while its header was not on disk, so then it just goes; otherwise a
        half-written record is cut off its end, so that a restart before its deletion
        finds a clean end (and seals it), not a torn one."""
        try:
            if seg.synced < HEADER_SIZE:
                seg.path.unlink(missing_ok=True)
                self._fill -= seg.size
                self._segs.remove(seg)
                return
            with open(seg.path, "rb") as f:
                raw = f.read(seg.size)
            for item in walk(seg.codec, raw, newest=True):
                if isinstance(item, Torn):
                    os.truncate(seg.path, item.offset)
                    self._fill -= seg.size - item.offset
                    seg.size = seg.synced = item.offset
                    break
        except OSError:
            pass

    def _retry_stuck(self) -> bool:
        """Appends wait while a drop exists only in memory; try to commit it now and then."""
        now = self._clock()
        if now < self._retry_at:
            return False
        self._retry_at = now + _RETRY_S
        return self._unstick()

    def _unstick(self) -> bool:
        if self._unsealed is not None:
            if not self._seal_at_open(self._unsealed):
                return False
            self._unsealed = None
        self._commit([s for s in self._segs if s is not self._cur and s.end is not None
                      and s.end - 1 <= self._ack])
        return not self._stuck

    def _refuse(self) -> SpoolFull:
        self.counters["dropped_full"] += 1
        return SpoolFull(f"{self.directory}: the disk is full and the spool has nothing left "
                         "to drop; record not kept. Fix: free space on its file system")

    def _check_disk(self) -> None:
        """While the disk bounds the spool (room.py): a drop waiting in memory is retried,
        and the bound follows the free space; at most once a second."""
        if not self._room.due(self._stuck):
            return
        if self._stuck and not self._unstick():
            return
        self._room.review(self._fill - len(self._buf), len(self._segs), stuck=self._stuck)

    def _sync_written(self) -> None:
        """What the open segment has on disk, and its directory entry, made durable
        without writing anything, so a state file may list it."""
        cur = self._cur
        if cur is None or self._fd is None:
            return
        written = cur.size - len(self._buf)
        if self.fsync_mode != "never":
            try:
                os.fsync(self._fd)
                self.counters["fsyncs"] += 1
            except OSError as exc:
                if exc.errno not in _FULL:
                    raise
                self._room.note(exc, self._fill)
                return
            if self._dir_dirty and not self._fsync_dir():
                return
        cur.synced = max(cur.synced, written)

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
        if seg.end is not None and seg.end - 1 <= self._ack:
            return self._next_segment(seg)     # wholly acknowledged or dropped
        _, off, prev = self._cursor
        if seg is self._cur and self._buf:
            self._flush()
            return True     # a full disk met meanwhile may have dropped segments: look again
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
