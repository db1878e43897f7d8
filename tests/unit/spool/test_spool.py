"""The spool on real files: round trip, restart, bounds, tamper detection, torn tails, wipe."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from agent.config import ConfigError
from agent.spool import (
    Spool,
    SpoolDamaged,
    SpoolError,
    load_spool_key,
    wipe,
    write_spool_key,
)
from agent.spool.segment import HEADER_SIZE, REC

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
RECORD = 17 + 16 + 10 + 100      # clear header + tag + body header + 100-byte payload, no key


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def spool(path: Path, key: bytes = KEY, **kw: Any) -> Spool:
    kw.setdefault("fsync", "never")
    kw.setdefault("max_bytes", 1 << 20)
    kw.setdefault("segment_bytes", 1024)
    return Spool(path, key, **kw)


def payload(i: int) -> bytes:
    return f"payload-{i:06d}-".encode().ljust(100, b".")


def fill(sp: Spool, n: int, key: str | None = None, start: int = 0) -> list[int]:
    return [sp.append(payload(start + i), key) for i in range(n)]


def seqs(sp: Spool) -> list[int]:
    return [r.seq for r in sp]


def segment_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.seg"))


def records_in(path: Path) -> list[tuple[int, int, int]]:
    """(offset, end, seq) of each record in a segment file, read from the clear headers."""
    raw = path.read_bytes()
    out, off = [], HEADER_SIZE
    while off + REC.size <= len(raw):
        length, _kind, seq, _crc = REC.unpack_from(raw, off)
        out.append((off, off + REC.size + length, seq))
        off += REC.size + length
    return out


def flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x40
    path.write_bytes(bytes(raw))


def kinds(sp: Spool) -> list[str]:
    return [d.kind for d in sp.damage]


# --- round trip and durability ---------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    wall = Clock(1_700_000_000.25)
    with spool(tmp_path / "s", wall=wall) as sp:
        assert sp.peek(5) == [] and sp.last_seq == 0
        a = sp.append(b"first", "plant/temp")
        b = sp.append(b"", None)
        c = sp.append(bytes(range(256)) * 3, "plant/\u00e9t\u00e9")
        assert (a, b, c) == (1, 2, 3)
        got = sp.peek(10)
        assert [(r.seq, r.payload, r.key) for r in got] == [
            (1, b"first", "plant/temp"), (2, b"", None), (3, bytes(range(256)) * 3, "plant/\u00e9t\u00e9")]
        assert all(r.time == 1_700_000_000.25 for r in got)
        assert sp.peek(1) == got[:1]
        assert [r.seq for r in sp.peek(5, after=1)] == [2, 3]
        sp.ack(2)
        assert [r.seq for r in sp.peek(5)] == [3]
        assert sp.acked_seq == 2
        with pytest.raises(ValueError):
            sp.ack(4)
        with pytest.raises(ValueError):
            sp.append(b"x" * 2000)


def test_many_segments_iterate_in_order(tmp_path: Path) -> None:
    with spool(tmp_path / "s") as sp:
        fill(sp, 200)
        assert len(segment_files(tmp_path / "s")) > 20
        assert seqs(sp) == list(range(1, 201))
        assert [r.payload for r in sp] == [payload(i) for i in range(200)]
        acked = []
        for r in sp:            # acking while iterating
            sp.ack(r.seq)
            acked.append(r.seq)
        assert acked == list(range(1, 201)) and sp.peek(1) == []


def test_restart_resumes_after_last_ack(tmp_path: Path) -> None:
    d = tmp_path / "s"
    with spool(d) as sp:
        fill(sp, 60)
        sp.ack(37)
        sp.sync()
        assert sp.durable_ack == 37
    files_before = len(segment_files(d))
    with spool(d) as sp:
        got = list(sp)
        assert [r.seq for r in got] == list(range(38, 61))
        assert [r.payload for r in got] == [payload(i) for i in range(37, 60)]
        assert sp.damage == [] and sp.counters["torn_tail"] == 0
        assert sp.append(b"more") == 61
    # Segments wholly acknowledged were deleted.
    assert files_before < 60 * RECORD // 1024
    with spool(d) as sp:
        assert seqs(sp) == list(range(38, 62))


def test_ack_becomes_durable_at_sync(tmp_path: Path) -> None:
    d = tmp_path / "s"
    sp = spool(d)
    fill(sp, 10)
    sp.sync()
    sp.ack(4)
    sp.sync()
    sp.ack(8)                   # not synced: after a crash records 5..8 come back
    assert (sp.durable_ack, sp.acked_seq) == (4, 8)
    sp.close(flush=False)
    with spool(d) as sp:
        assert seqs(sp) == list(range(5, 11))


def test_durability_modes(tmp_path: Path) -> None:
    clock = Clock()
    sp = spool(tmp_path / "a", fsync="interval", fsync_interval_ms=10, clock=clock)
    assert sp.append(b"a") == 1 and sp.durable_seq == 0
    assert sp.sync_due() == pytest.approx(1000.010)
    assert not sp.maybe_sync()
    clock.t += 0.004
    sp.append(b"b")
    assert sp.durable_seq == 0
    clock.t += 0.007            # past the first change + 10 ms: the next append syncs
    sp.append(b"c")
    assert sp.durable_seq == 3 and sp.sync_due() is None
    sp.ack(2)
    assert sp.durable_ack == 0
    clock.t += 0.011
    assert sp.maybe_sync()
    assert sp.durable_ack == 2 and sp.counters["fsyncs"] > 0
    sp.close()

    sp = spool(tmp_path / "b", fsync="always")
    assert sp.append(b"a") == 1 and sp.durable_seq == 1
    sp.ack(1)
    assert sp.durable_ack == 1
    sp.close()


def test_durable_sizes_match_the_files_after_sync(tmp_path: Path) -> None:
    d = tmp_path / "s"
    with spool(d) as sp:
        fill(sp, 25)
        sp.sync()
        assert sp.durable_sizes() == {p.name: p.stat().st_size for p in segment_files(d)}


def test_second_process_is_refused(tmp_path: Path) -> None:
    with spool(tmp_path / "s"), pytest.raises(SpoolError, match="in use"):
        spool(tmp_path / "s")


def test_stats(tmp_path: Path) -> None:
    wall = Clock(5000.0)
    with spool(tmp_path / "s", wall=wall, max_bytes=8192) as sp:
        assert sp.stats().oldest_age_s is None and sp.stats().records == 0
        fill(sp, 3)
        wall.t += 2.5
        fill(sp, 2)
        sp.ack(1)
        st = sp.stats()
        assert st.records == 4 and st.oldest_age_s == pytest.approx(2.5)
        assert st.fill_bytes == sum(p.stat().st_size for p in segment_files(tmp_path / "s"))
        assert st.fill_fraction == st.fill_bytes / 8192
        assert (st.last_seq, st.acked_seq, st.dropped_oldest, st.dropped_conflated) == (5, 1, 0, 0)


# --- bounds ----------------------------------------------------------------------------


def test_drop_oldest_events(tmp_path: Path) -> None:
    # 1024-byte segments hold 6 records of 143 bytes (76 header + 858 + 33 end record = 967).
    with spool(tmp_path / "s", max_bytes=4096) as sp:
        fill(sp, 24)
        assert sp.counters["dropped_oldest"] == 0
        fill(sp, 1, start=24)   # 4 full segments + 1 record do not fit: the oldest segment goes
        assert sp.counters["dropped_oldest"] == 6
        assert seqs(sp) == list(range(7, 26))
        fill(sp, 75, start=25)
        dropped = sp.counters["dropped_oldest"]
        left = seqs(sp)
        assert left == list(range(dropped + 1, 101))     # exactly the oldest went
        assert dropped % 6 == 0 and sp.counters["dropped_conflated"] == 0
        assert sp.stats().fill_bytes <= 4096
        sp.ack(50)              # records already dropped count once, never again
        assert sp.counters["dropped_oldest"] == dropped
    with spool(tmp_path / "s", max_bytes=4096) as sp:
        assert seqs(sp) == list(range(max(51, dropped + 1), 101))


def test_acked_space_is_reused_before_dropping(tmp_path: Path) -> None:
    with spool(tmp_path / "s", max_bytes=4096) as sp:
        fill(sp, 24)            # four full segments
        sp.ack(18)              # three of them acknowledged, not yet synced
        fill(sp, 18, start=24)  # overflows at once: acked segments go, nothing is dropped
        assert sp.counters["dropped_oldest"] == 0
        assert seqs(sp) == list(range(19, 43))
        assert sp.durable_ack == 18 and len(segment_files(tmp_path / "s")) == 4


def test_conflation_keeps_latest_per_key(tmp_path: Path) -> None:
    appended: list[tuple[int, str]] = []
    with spool(tmp_path / "s", max_bytes=4096) as sp:
        for i in range(300):
            key = f"plant/state/{i % 3}"
            appended.append((sp.append(payload(i), key), key))
            assert sp.stats().fill_bytes <= 4096
        left = {r.seq: r for r in sp}
        assert sp.counters["dropped_oldest"] == 0
        assert sp.counters["dropped_conflated"] == 300 - len(left) > 200
        assert sp.counters["compactions"] > 0
        latest = {key: seq for seq, key in appended}
        assert set(latest.values()) <= set(left)            # the latest of every key survives
        for seq, key in appended:                           # what went was superseded
            assert seq in left or latest[key] > seq
        assert [r.payload for r in left.values()] == [payload(s - 1) for s in left]
    with spool(tmp_path / "s", max_bytes=4096) as sp:       # compacted segments reopen clean
        assert set(seqs(sp)) == set(left) and sp.damage == []


def test_superseded_state_goes_before_events(tmp_path: Path) -> None:
    with spool(tmp_path / "s", max_bytes=4096) as sp:
        events, states = [], []
        for i in range(60):
            if i % 2:
                events.append(sp.append(payload(i)))
            else:
                states.append(sp.append(payload(i), "plant/level"))
        left = set(seqs(sp))
        assert sp.counters["dropped_oldest"] == sum(1 for s in events if s not in left)
        assert sp.counters["dropped_conflated"] == sum(1 for s in states if s not in left)
        assert sp.counters["dropped_conflated"] > 0
        assert states[-1] in left
        lost_events = [s for s in events if s not in left]
        assert lost_events == events[:len(lost_events)]     # events go oldest first


# --- confidentiality -------------------------------------------------------------------


def test_no_plaintext_in_files(tmp_path: Path) -> None:
    d = tmp_path / "s"
    marker = b"SECRET-PLANT-VALUE-4711"
    with spool(d) as sp:
        for i in range(40):
            sp.append(marker + bytes([i]), "secret/topic/name")
        sp.ack(3)
        sp.sync()
        raw = b"".join(p.read_bytes() for p in d.iterdir() if p.is_file())
    assert len(raw) > 40 * len(marker)
    assert marker not in raw and b"secret/topic" not in raw and KEY not in raw


# --- tampering, damage, torn writes -----------------------------------------------------


def test_flipped_byte_in_a_middle_record_is_reported(tmp_path: Path) -> None:
    d = tmp_path / "s"
    with spool(d) as sp:
        fill(sp, 30)
    victim = segment_files(d)[1]
    off, end, seq = records_in(victim)[2]
    flip(victim, (off + end) // 2)
    before = victim.read_bytes()

    with pytest.raises(SpoolDamaged, match=f"seq {seq} .*fails authentication"):
        spool(d, strict=True)
    assert victim.read_bytes() == before                      # strict changed nothing

    with spool(d) as sp:
        assert kinds(sp) == ["corrupt"] and sp.damage[0].seq == seq
        assert sp.counters["damaged"] == 1 and sp.counters["damage_corrupt"] == 1
        assert sp.stats().damaged == 1
        assert seqs(sp) == [s for s in range(1, 31) if s != seq]   # nothing else lost
    assert (d / "damaged" / victim.name).read_bytes() == before   # evidence kept
    with spool(d) as sp:                                       # reported once, then repaired
        assert sp.damage == [] and seqs(sp) == [s for s in range(1, 31) if s != seq]


def test_damaged_record_header_loses_the_rest_of_its_segment(tmp_path: Path) -> None:
    d = tmp_path / "s"
    with spool(d) as sp:
        fill(sp, 30)
    victim = segment_files(d)[1]
    recs = records_in(victim)
    flip(victim, recs[1][0] + 2)           # the length field: checksum fails
    with spool(d) as sp:
        assert kinds(sp) == ["corrupt"] and "checksum" in sp.damage[0].message
        lost = {seq for _, _, seq in recs[1:-1]}                # data records after it
        assert seqs(sp) == [s for s in range(1, 31) if s not in lost]


def test_swapped_records_are_detected(tmp_path: Path) -> None:
    d = tmp_path / "s"
    with spool(d) as sp:
        fill(sp, 30)
    victim = segment_files(d)[2]
    (a0, a1, sa), (b0, b1, sb) = records_in(victim)[1:3]
    raw = bytearray(victim.read_bytes())
    raw[a0:b1] = raw[b0:b1] + raw[a0:a1]
    victim.write_bytes(bytes(raw))
    with spool(d) as sp:
        assert kinds(sp) == ["corrupt", "reordered"]
        left = seqs(sp)
        assert sa not in left and sb not in left and left == sorted(left)


def test_swapped_segments_are_detected(tmp_path: Path) -> None:
    d = tmp_path / "s"
    with spool(d) as sp:
        fill(sp, 30)
    one, two = segment_files(d)[1:3]
    tmp = d / "x"
    os.rename(one, tmp)
    os.rename(two, one)
    os.rename(tmp, two)
    with pytest.raises(SpoolDamaged, match="renamed or swapped"):
        spool(d, strict=True)
    with spool(d) as sp:
        assert kinds(sp) == ["reordered", "reordered", "missing"]
        assert "records 7..18 are missing" in sp.damage[2].message
        assert seqs(sp) == list(range(1, 7)) + list(range(19, 31))
        assert sorted(p.name for p in (d / "damaged").iterdir()) == sorted([one.name, two.name])


def test_replayed_segment_is_detected(tmp_path: Path) -> None:
    d = tmp_path / "s"
    with spool(d) as sp:
        fill(sp, 30)
        sp.sync()
        first = segment_files(d)[0]
        copy = first.read_bytes()
        sp.ack(12)
        sp.sync()               # deletes the first two segments
        sp.sync()               # the state file no longer lists them as being deleted
    assert not first.exists()
    first.write_bytes(copy)
    with pytest.raises(SpoolDamaged, match="replayed or injected"):
        spool(d, strict=True)
    with spool(d) as sp:
        assert kinds(sp) == ["replayed"]
        assert seqs(sp) == list(range(13, 31))


def test_crash_leftover_of_a_deleted_segment_is_not_damage(tmp_path: Path) -> None:
    d = tmp_path / "s"
    with spool(d) as sp:
        fill(sp, 30)
        sp.sync()
        first = segment_files(d)[0]
        copy = first.read_bytes()
        sp.ack(12)
        sp.sync()               # state lists the segment as deleting, then unlinks it
        sp.close(flush=False)
    first.write_bytes(copy)     # as if the unlink never reached the disk
    with spool(d) as sp:
        assert sp.damage == [] and seqs(sp) == list(range(13, 31))
    assert not first.exists()


def test_replayed_old_generation_is_detected(tmp_path: Path) -> None:
    d = tmp_path / "s"
    with spool(d, max_bytes=4096) as sp:
        for i in range(18):
            sp.append(payload(i), "k")
        first = segment_files(d)[0]
        before = first.read_bytes()
        for i in range(18, 40):
            sp.append(payload(i), "k")      # conflation rewrites the old segments
        assert sp.counters["compactions"] > 0
        assert first.exists() and first.read_bytes() != before
    first.write_bytes(before)
    with spool(d, max_bytes=4096) as sp:
        assert "replayed" in kinds(sp)
        assert "an old copy put back" in sp.damage[0].message


def test_truncation_in_the_middle_is_detected(tmp_path: Path) -> None:
    d = tmp_path / "s"
    with spool(d) as sp:
        fill(sp, 30)
    segs = segment_files(d)
    recs = records_in(segs[1])
    os.truncate(segs[1], recs[2][0] + 20)          # cut inside a record
    os.truncate(segs[3], records_in(segs[3])[-1][0])   # cut its end record off, at a boundary
    with spool(d) as sp:
        assert kinds(sp) == ["truncated", "truncated"]
        assert "cut short" in sp.damage[0].message and "cut short" in sp.damage[1].message
        assert sp.counters["torn_tail"] == 0
        lost = {s for _, _, s in recs[2:-1]}
        assert seqs(sp) == [s for s in range(1, 31) if s not in lost]


def test_deleted_segment_is_detected(tmp_path: Path) -> None:
    d = tmp_path / "s"
    with spool(d) as sp:
        fill(sp, 30)
        sp.sync()
    segment_files(d)[2].unlink()
    segment_files(d)[0].unlink()
    with spool(d) as sp:
        assert kinds(sp) == ["missing", "missing"]
        assert "records 1..6 are missing before the oldest segment" in sp.damage[0].message
        assert "records 13..18 are missing between" in sp.damage[1].message


def test_removed_newest_records_are_detected(tmp_path: Path) -> None:
    d = tmp_path / "s"
    with spool(d) as sp:
        fill(sp, 10)
        sp.ack(1)
        sp.sync()               # the state file records that seq 10 was durable
    newest = segment_files(d)[-1]
    os.truncate(newest, records_in(newest)[-3][0])     # at a record boundary: looks clean
    with spool(d) as sp:
        assert kinds(sp) == ["truncated"] and "seq 10 was durable" in sp.damage[0].message


def test_foreign_segment_is_detected(tmp_path: Path) -> None:
    with spool(tmp_path / "a") as a, spool(tmp_path / "b") as b:
        fill(a, 30)
        fill(b, 40)
    foreign = segment_files(tmp_path / "b")[-1]
    shutil.copyfile(foreign, tmp_path / "a" / foreign.name)
    with spool(tmp_path / "a") as sp:
        assert kinds(sp) == ["foreign"] and "another spool" in sp.damage[0].message
        assert seqs(sp) == list(range(1, 31))


def test_wrong_key_is_named(tmp_path: Path) -> None:
    with spool(tmp_path / "s") as sp:
        fill(sp, 3)
    with pytest.raises(SpoolError, match="key does not match this spool.*Fix"):
        spool(tmp_path / "s", key=OTHER_KEY)


def test_tampered_state_file_is_reported_and_rebuilt(tmp_path: Path) -> None:
    d = tmp_path / "s"
    with spool(d) as sp:
        fill(sp, 20)
        sp.ack(5)
    flip(d / "state", 50)
    with pytest.raises(SpoolDamaged, match="fails authentication"):
        spool(d, strict=True)
    with spool(d) as sp:
        assert kinds(sp) == ["state"]
        assert seqs(sp)[-1] == 20 and seqs(sp)[0] <= 6        # at least once: nothing lost


def test_torn_tail_is_discarded_and_counted(tmp_path: Path) -> None:
    d = tmp_path / "s"
    with spool(d) as sp:
        fill(sp, 10)
        sp.sync()
        fill(sp, 3, start=10)
        sp.flush()              # written, never synced: then the power goes
        sp.close(flush=False)
    newest = segment_files(d)[-1]
    recs = records_in(newest)
    os.truncate(newest, recs[-1][0] + 30)        # the last append cut mid-record
    with spool(d, strict=True) as sp:             # a torn tail is not damage
        assert sp.damage == [] and sp.counters["torn_tail"] == 1
        assert sp.stats().torn_tail == 1
        assert seqs(sp) == list(range(1, 13))
        assert sp.append(b"next") == 13
    with spool(d) as sp:
        assert sp.damage == [] and sp.counters["torn_tail"] == 0
        assert seqs(sp)[-2:] == [12, 13]


def test_zero_filled_tail_is_torn(tmp_path: Path) -> None:
    d = tmp_path / "s"
    with spool(d) as sp:
        fill(sp, 4)
        sp.flush()
        sp.close(flush=False)
    newest = segment_files(d)[-1]
    raw = bytearray(newest.read_bytes())
    recs = records_in(newest)
    cut = recs[-1][0] + 40                           # data never reached these blocks
    raw[cut:] = bytes(len(raw) - cut)
    newest.write_bytes(bytes(raw))
    with spool(d) as sp:
        assert sp.damage == [] and sp.counters["torn_tail"] == 1
        assert seqs(sp) == list(range(1, 4))


def test_flipped_byte_in_the_last_record_is_damage_not_torn(tmp_path: Path) -> None:
    d = tmp_path / "s"
    with spool(d) as sp:
        fill(sp, 4)
    newest = segment_files(d)[-1]
    off, end, seq = records_in(newest)[-1]           # the last record of the newest segment
    flip(newest, end - 20)
    with spool(d) as sp:
        assert kinds(sp) == ["corrupt"] and sp.counters["torn_tail"] == 0
        assert seqs(sp) == [1, 2, 3]


# --- keys and wipe ---------------------------------------------------------------------


def test_load_spool_key_from_file_and_credential(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "spool.key"
    key = write_spool_key(path)
    assert load_spool_key(path) == key and load_spool_key(str(path)) == key
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "spool-key").write_bytes(OTHER_KEY)     # systemd credentials may be raw bytes
    os.chmod(creds / "spool-key", 0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert load_spool_key("spool-key") == OTHER_KEY
    with pytest.raises(ConfigError, match="not found.*no credential 'nope'"):
        load_spool_key("nope")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="readable by others.*chmod 600"):
        load_spool_key(path)
    os.chmod(path, 0o600)
    path.write_text("abc\n")
    with pytest.raises(ConfigError, match="not a spool key"):
        load_spool_key(path)


def test_wipe_leaves_no_files_and_no_key(tmp_path: Path) -> None:
    d = tmp_path / "s"
    key_path = tmp_path / "spool.key"
    key = write_spool_key(key_path)
    with Spool(d, key, fsync="never", max_bytes=1 << 20, segment_bytes=1024) as sp:
        fill(sp, 30)
    segment_files(d)[1].write_bytes(b"junk")         # damage leaves evidence in damaged/
    with Spool(d, key, fsync="never", max_bytes=1 << 20, segment_bytes=1024) as sp:
        assert sp.damage
    assert (d / "damaged").is_dir()
    count = wipe(d, key_path)
    assert count >= 7
    assert list(d.iterdir()) == [] and not key_path.exists()


def test_wipe_refuses_other_directories_and_a_spool_in_use(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root")
    with pytest.raises(SpoolError, match="does not look like a spool"):
        wipe(tmp_path / "etc", None)
    assert (tmp_path / "etc" / "passwd").exists()
    with spool(tmp_path / "s") as sp:
        fill(sp, 3)
        with pytest.raises(SpoolError, match="in use"):
            wipe(tmp_path / "s", None)


def test_peek_after_excludes_records_read_during_the_call(tmp_path: Path) -> None:
    """Regression: the read-ahead index was taken before reading, so a record at the
    floor came back (TX then sent every message twice)."""
    spool = Spool(tmp_path / "s", bytes(32), fsync="never")
    first = spool.append(b"a")
    assert spool.peek(10, after=first) == []
    second = spool.append(b"b")
    assert [r.seq for r in spool.peek(10, after=first)] == [second]
    assert [r.seq for r in spool.peek(10)] == [first, second]
    spool.close()
