"""Reading a spool directory at open: what is there, what is torn, what is damaged.

This pass only reads. It returns a `Recovery`: the segments to keep with their
metadata, the damage found, and what the store must do about it (delete
leftovers, cut torn tails, move damaged files to ``damaged/``, rewrite
segments that lost records). A strict open raises on damage before any of it.

How each thing on disk is judged:

    crash leftovers          *.tmp; segments the state file was deleting; a torn
                             newest segment header; a torn or zero-filled tail of
                             the newest segment                      -> removed, counted
    bad header, foreign      header fails authentication, spool id differs,
    spool, renamed file      file name and header id differ          -> damaged/, reported
    replayed segment         id below the manifest's next id but not listed, or an
                             older generation than listed            -> damaged/, reported
    damaged record           fails its checksum or authentication, out of order,
                             cut short anywhere but the newest tail  -> reported; the
                             segment is rewritten without it, the original kept in damaged/
    missing records          gap before the oldest segment, between segments, a segment
                             without its end record, a log ending before the state's
                             synced seq, a listed newest segment gone -> reported
    reserve, lock            not judged: the store's own (room for state files on a
                             full disk; the flock)
"""

from __future__ import annotations

import os
from array import array
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.spool.model import DamageKind, SpoolDamage
from agent.spool.segment import (
    HEADER_SIZE,
    Bad,
    Data,
    End,
    HeaderError,
    SegmentCodec,
    Torn,
    body_key,
    open_header,
    parse_segment_name,
    walk,
    zero_run_start,
)
from agent.spool.state import SpoolState, StateError, StateFile

DAMAGED_DIR = "damaged"


@dataclass(slots=True, eq=False)
class SegmentInfo:
    """What the store keeps in memory about one live segment."""
    codec: SegmentCodec
    path: Path
    size: int                    # bytes of the file that belong to it (buffered ones included)
    synced: int                  # bytes known to be on disk
    end: int | None = None       # seq in its end record: the next segment's base
    first: int | None = None     # first and last data seq
    last: int | None = None
    count: int = 0               # data records
    seqs: array[int] | None = None   # every data seq, only once they are not contiguous
    superseded: int = 0          # records here whose key has a newer record

    @property
    def id(self) -> int:
        return self.codec.header.segment_id

    @property
    def base(self) -> int:
        return self.codec.header.base_seq

    def add(self, seq: int) -> None:
        if self.last is None or self.first is None:
            self.first = seq
        elif self.seqs is None and seq != self.last + 1:
            self.seqs = array("Q", range(self.first, self.last + 1))
        if self.seqs is not None:
            self.seqs.append(seq)
        self.last = seq
        self.count += 1

    def live_after(self, ack: int) -> int:
        """Data records with seq > ack."""
        if self.last is None or self.first is None or self.last <= ack:
            return 0
        if self.seqs is None:
            return self.last - max(self.first, ack + 1) + 1
        return len(self.seqs) - bisect_right(self.seqs, ack)


@dataclass(slots=True)
class Recovery:
    spool_id: bytes | None               # None: a new spool
    ack: int = 0
    synced: int = 0
    next_seq: int = 1
    next_segment_id: int = 1
    segments: list[SegmentInfo] = field(default_factory=list)
    latest: dict[str, int] = field(default_factory=dict)
    damage: list[SpoolDamage] = field(default_factory=list)
    torn: int = 0
    remove: list[Path] = field(default_factory=list)          # crash leftovers
    quarantine: list[Path] = field(default_factory=list)      # whole files to move to damaged/
    truncate: dict[Path, int] = field(default_factory=dict)   # torn tails to cut
    rewrite: list[SegmentInfo] = field(default_factory=list)  # lost records inside
    evidence: list[Path] = field(default_factory=list)        # copy to damaged/ before rewriting
    state_rebuilt: bool = False


def recover(directory: Path, key: bytes, state_file: StateFile,
            wrong_key: Callable[[str], Exception]) -> Recovery:
    state: SpoolState | None
    rec = Recovery(spool_id=None)

    def report(kind: DamageKind, segment: int | None, offset: int | None, seq: int | None,
               message: str) -> None:
        rec.damage.append(SpoolDamage(kind, segment, offset, seq, message))

    try:
        state = state_file.read()
    except StateError as exc:
        if exc.wrong_key:
            raise wrong_key(str(exc)) from None
        report("state", None, None, None, f"{exc}; rebuilding it from the segments")
        state = None
        rec.state_rebuilt = True

    files: dict[int, Path] = {}
    for entry in os.scandir(directory):
        if entry.name.endswith(".tmp") and entry.is_file():
            rec.remove.append(Path(entry.path))
            continue
        sid = parse_segment_name(entry.name)
        if sid is not None and entry.is_file():
            files[sid] = Path(entry.path)

    if state is None and not rec.state_rebuilt:
        if not files:
            return rec                          # a new spool
        report("state", None, None, None, f"{state_file.path}: state file missing but "
               f"{len(files)} segments present; rebuilding it from the segments")
        rec.state_rebuilt = True

    if state is not None:
        rec.spool_id = state.spool_id
        rec.ack = state.ack_seq
        rec.synced = state.synced_seq
        rec.next_segment_id = state.next_segment_id
        for sid in state.deleting & files.keys():
            rec.remove.append(files.pop(sid))
    else:
        rec.spool_id = _spool_id_from_segments(key, files)
    rec.next_segment_id = max([rec.next_segment_id, *(sid + 1 for sid in files)])

    manifest = state.manifest if state is not None else {}
    newest = max(files, default=None)
    prev: SegmentInfo | None = None
    broken: set[int] = set()                     # segments already reported unreadable past a point
    high = 0                                     # highest seq seen, damaged records included
    superseded_in: dict[int, SegmentInfo] = {}   # seq -> segment, for superseded keys only
    for sid in sorted(files):
        path = files[sid]
        raw = path.read_bytes()
        name = path.name
        try:
            codec = open_header(key, raw)
        except HeaderError as exc:
            torn = len(raw) < HEADER_SIZE or zero_run_start(raw, 0) < HEADER_SIZE
            if sid == newest and torn and sid not in manifest:
                rec.remove.append(path)
                rec.torn += 1
            else:
                report("corrupt", sid, 0, None, f"segment {name}: {exc}")
                rec.quarantine.append(path)
            continue
        hdr = codec.header
        if hdr.segment_id != sid:
            report("reordered", sid, 0, None, f"segment file {name} holds segment "
                   f"{hdr.segment_id:016x}: segment files renamed or swapped")
            rec.quarantine.append(path)
            continue
        if hdr.spool_id != rec.spool_id:
            report("foreign", sid, 0, None, f"segment {name} belongs to another spool "
                   f"({hdr.spool_id.hex()}, this one is {(rec.spool_id or b'').hex()})")
            rec.quarantine.append(path)
            continue
        if state is not None and not rec.state_rebuilt:
            if sid in manifest and hdr.generation < manifest[sid]:
                report("replayed", sid, 0, None, f"segment {name} is generation {hdr.generation} "
                       f"but the state file lists generation {manifest[sid]}: an old copy put back")
                rec.quarantine.append(path)
                continue
            if sid not in manifest and sid < state.next_segment_id:
                report("replayed", sid, 0, None, f"segment {name} is not in the spool's manifest "
                       "(it was deleted): a replayed or injected segment")
                rec.quarantine.append(path)
                continue

        seg = SegmentInfo(codec, path, len(raw), len(raw))
        base = hdr.base_seq
        if prev is None:
            if base > rec.ack + 1 and rec.state_rebuilt:
                rec.ack = base - 1
            elif base > rec.ack + 1:
                report("missing", sid, None, rec.ack + 1, f"records {rec.ack + 1}..{base - 1} are "
                       f"missing before the oldest segment {name}: segments deleted")
                rec.ack = base - 1
        else:
            prev_end = prev.end if prev.end is not None else (
                prev.last + 1 if prev.last is not None else prev.base)
            if base < prev_end:
                report("replayed", sid, 0, base, f"segment {name} starts at seq {base}, before the "
                       f"previous segment ends (seq {prev_end}): an overlapping copy")
                rec.quarantine.append(path)
                continue
            if prev.end is None and prev.id in broken:
                prev.end = base
            elif prev.end is None:
                report("truncated", prev.id, prev.size, prev_end, f"segment {prev.path.name} ends "
                       f"without its end record: cut short"
                       + (f"; records {prev_end}..{base - 1} lost" if base > prev_end else ""))
                prev.end = base
                _mark_rewrite(rec, prev, evidence=True)
            elif base > prev_end:
                report("missing", sid, None, prev_end, f"records {prev_end}..{base - 1} are missing "
                       f"between segments {prev.path.name} and {name}: a segment deleted")
                prev.end = base
                _mark_rewrite(rec, prev, evidence=False)

        for item in walk(codec, raw, newest=sid == newest):
            if isinstance(item, Data):
                seg.add(item.seq)
                high = max(high, item.seq)
                if item.seq > rec.ack:
                    k = body_key(item.body)
                    if k is not None:
                        old = rec.latest.get(k)
                        if old is not None:
                            owner = superseded_in.pop(old, None) or seg
                            owner.superseded += 1
                        rec.latest[k] = item.seq
                        superseded_in[item.seq] = seg
            elif isinstance(item, End):
                seg.end = item.seq
            elif isinstance(item, Torn):
                rec.torn += 1
                rec.truncate[path] = item.offset
                seg.size = seg.synced = item.offset
            elif isinstance(item, Bad):
                report(item.kind, sid, item.offset, item.seq, item.message)  # type: ignore[arg-type]
                high = max(high, item.seq or 0)
                _mark_rewrite(rec, seg, evidence=True)
                if item.fatal:
                    seg.size = seg.synced = item.offset
                    broken.add(sid)
        rec.segments.append(seg)
        prev = seg

    if state is not None and not rec.state_rebuilt:
        last_id = rec.segments[-1].id if rec.segments else -1
        gone = sorted(sid for sid in manifest if sid > last_id and sid not in files)
        if gone:
            report("missing", gone[0], None, None, "segments listed in the state file are missing: "
                   + ", ".join(f"{sid:016x}.seg" for sid in gone) + " (deleted)")

    log_end = rec.ack
    if rec.segments:
        last = rec.segments[-1]
        log_end = last.end - 1 if last.end is not None else max(high, last.base - 1)
    if rec.synced > max(rec.ack, log_end):
        report("truncated", rec.segments[-1].id if rec.segments else None, None, log_end + 1,
               f"the log ends at seq {log_end} but seq {rec.synced} was durable: the newest "
               "records were removed")
    rec.next_seq = max(rec.ack, log_end, rec.synced) + 1
    return rec


def _mark_rewrite(rec: Recovery, seg: SegmentInfo, *, evidence: bool) -> None:
    if seg not in rec.rewrite:
        rec.rewrite.append(seg)
    if evidence and seg.path not in rec.evidence:
        rec.evidence.append(seg.path)


def _spool_id_from_segments(key: bytes, files: dict[int, Path]) -> bytes | None:
    """Without a state file: the spool id of the newest segment that authenticates."""
    for sid in sorted(files, reverse=True):
        try:
            with open(files[sid], "rb") as f:
                return open_header(key, f.read(HEADER_SIZE)).header.spool_id
        except (HeaderError, OSError):
            continue
    return None
