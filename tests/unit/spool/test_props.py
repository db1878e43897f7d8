"""Property tests of the spool: random appends, syncs, acks, reopens and simulated crashes.

A crash is simulated on the real files: the spool is abandoned without
flushing (what was still in its buffer never reached the OS), then each
segment file is cut at a random offset at or after the point the spool last
made durable (`durable_sizes()`), or zero-filled from a block boundary there,
as a file system that extended the file but never wrote its last blocks would;
a segment created since the last sync may vanish altogether, and one deleted
by the last sync may come back. That is what
fsync guarantees: bytes written before a completed sync are on disk, later
ones may be partly there. After reopening:

- no durable, unacknowledged record is lost (seq in (durable_ack, durable_seq]);
- every record returned is exactly one that was appended (never corrupted);
- order is preserved, and records past durable_seq are a gap-free prefix;
- a crash is never reported as damage.

The second machine runs the same with a small bound, so segments are compacted
and dropped between crashes; every record that goes is counted as dropped.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from agent.spool import Spool

KEY = bytes(range(32))
KEYS = st.sampled_from([None, None, "plant/a", "plant/b", "plant/c"])


class CrashingSpool(RuleBasedStateMachine):
    MAX_BYTES = 1 << 24
    SEGMENT_BYTES = 700

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="spool-prop-"))
        self.spool = self._open()
        self.model: dict[int, tuple[bytes, str | None]] = {}   # seq -> record, acked or not
        self.acked = 0
        # Segments the last sync deleted: until the spool syncs its directory again (which it
        # does before it next writes its state file) a crash may bring them back.
        self.unlinked: dict[str, bytes] = {}
        self.unlinked_state = 0

    def _open(self) -> Spool:
        return Spool(self.dir, KEY, max_bytes=self.MAX_BYTES, segment_bytes=self.SEGMENT_BYTES,
                      fsync="never")

    def unacked(self) -> list[int]:
        return sorted(s for s in self.model if s > self.acked)

    @rule(payload=st.binary(max_size=150), key=KEYS)
    def append(self, payload: bytes, key: str | None) -> None:
        counters = self.spool.counters
        before = counters["dropped_oldest"] + counters["dropped_conflated"]
        seq = self.spool.append(payload, key)
        assert seq > max(self.model, default=self.acked)
        self.model[seq] = (payload, key)
        dropped = counters["dropped_oldest"] + counters["dropped_conflated"] - before
        if dropped:                             # the bounds made room: account for every record
            event("records dropped for room")
            left = {r.seq for r in self.spool}
            gone = [s for s in self.unacked() if s not in left]
            assert len(gone) == dropped and seq not in gone
            for s in gone:
                del self.model[s]
            self.acked = self.spool.acked_seq   # dropping a segment moves the ack point
        assert self.spool.stats().fill_bytes <= self.MAX_BYTES

    @rule(n=st.integers(1, 8))
    def append_many(self, n: int) -> None:
        for i in range(n):
            self.append(bytes([i]) * (i * 13 % 90), None)

    @rule()
    def sync(self) -> None:
        before = {p.name: p.read_bytes() for p in self.dir.glob("*.seg")}
        self.spool.sync()
        self.unlinked = {n: raw for n, raw in before.items() if not (self.dir / n).exists()}
        self.unlinked_state = self.spool.counters["state_writes"]
        assert self.spool.durable_seq == self.spool.last_seq
        assert self.spool.durable_ack == self.acked

    @rule()
    def flush(self) -> None:
        self.spool.flush()

    @precondition(lambda self: bool(self.unacked()))
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(self.unacked()))
        self.spool.ack(seq)
        self.acked = seq

    @rule()
    def reopen(self) -> None:
        self.unlinked = {}
        self.spool.close()
        self.spool = self._open()
        assert self.spool.damage == [] and self.spool.counters["torn_tail"] == 0
        assert self.spool.acked_seq == self.acked

    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        durable = self.spool.durable_sizes()
        durable_seq, durable_ack = self.spool.durable_seq, self.spool.durable_ack
        if self.spool.counters["state_writes"] != self.unlinked_state:
            self.unlinked = {}
        self.spool.close(flush=False)
        for path in sorted(self.dir.glob("*.seg")):
            on_disk = path.stat().st_size
            safe = durable.get(path.name, 0)
            if path.name not in durable and data.draw(st.booleans(), label="vanish"):
                path.unlink()
                continue
            if on_disk <= safe:
                continue
            if data.draw(st.booleans(), label="zeros"):
                starts = [safe] + list(range((safe // 512 + 1) * 512, on_disk, 512))
                cut = data.draw(st.sampled_from(starts), label="zero from")
                with open(path, "r+b") as f:
                    f.seek(cut)
                    f.write(bytes(on_disk - cut))
            else:
                os.truncate(path, data.draw(st.integers(safe, on_disk), label="cut at"))
        for name, raw in self.unlinked.items():     # the unlink had not reached the disk
            if data.draw(st.booleans(), label="undeleted"):
                (self.dir / name).write_bytes(raw)
        self.unlinked = {}
        self.spool = self._open()
        event(f"crash: torn tails {self.spool.counters['torn_tail']}, "
              f"{'several segments' if len(durable) > 1 else 'one segment'}")
        assert self.spool.damage == []
        assert self.spool.acked_seq == durable_ack
        got = list(self.spool)
        seqs = [r.seq for r in got]
        assert seqs == sorted(set(seqs))
        for r in got:
            assert r.seq > durable_ack
            assert self.model.get(r.seq) == (r.payload, r.key), f"seq {r.seq} corrupted"
        must = [s for s in self.model if durable_ack < s <= durable_seq]
        assert set(must) <= set(seqs), f"lost durable records {sorted(set(must) - set(seqs))}"
        beyond = [s for s in seqs if s > durable_seq]
        assert beyond == list(range(durable_seq + 1, durable_seq + 1 + len(beyond)))
        self.model = {r.seq: (r.payload, r.key) for r in got}
        self.acked = durable_ack

    @invariant()
    def peek_matches_model(self) -> None:
        expected = self.unacked()
        got = self.spool.peek(len(expected) + 1)
        assert [r.seq for r in got] == expected
        assert all(self.model[r.seq] == (r.payload, r.key) for r in got)

    def teardown(self) -> None:
        self.spool.close(flush=False)
        shutil.rmtree(self.dir, ignore_errors=True)


CrashingSpool.TestCase.settings = settings(max_examples=100, stateful_step_count=50, deadline=None,
                                           suppress_health_check=[HealthCheck.too_slow])
TestCrashingSpool = CrashingSpool.TestCase


class CrashingBoundedSpool(CrashingSpool):
    """The same under overflow: compactions and dropped segments between the crashes."""
    MAX_BYTES = 2048
    SEGMENT_BYTES = 512


CrashingBoundedSpool.TestCase.settings = settings(max_examples=100, stateful_step_count=50,
                                                  deadline=None,
                                                  suppress_health_check=[HealthCheck.too_slow])
TestCrashingBoundedSpool = CrashingBoundedSpool.TestCase


# --- bounds: every missing record is accounted for --------------------------------------


OPS = st.lists(st.tuples(st.sampled_from(["append"] * 12 + ["ack", "sync", "reopen"]),
                         st.integers(40, 120), KEYS), min_size=20, max_size=150)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_bounded_spool_accounts_for_every_drop(ops: list[tuple[str, int, str | None]]) -> None:
    directory = Path(tempfile.mkdtemp(prefix="spool-bound-"))

    def open_spool() -> Spool:
        return Spool(directory, KEY, max_bytes=2400, segment_bytes=600, fsync="never")

    sp = open_spool()
    appended: dict[int, tuple[bytes, str | None]] = {}
    present: list[int] = []
    acked = 0
    totals = {"dropped_oldest": 0, "dropped_conflated": 0}
    try:
        for op, n, key in ops:
            before = sp.counters["dropped_oldest"] + sp.counters["dropped_conflated"]
            before_oldest = sp.counters["dropped_oldest"]
            if op == "append":
                payload = os.urandom(n)
                seq = sp.append(payload, key)
                appended[seq] = (payload, key)
                present.append(seq)
            elif op == "ack" and present:
                acked = present[min(n % 3, len(present) - 1)]
                sp.ack(acked)
            elif op == "sync":
                sp.sync()
            elif op == "reopen":
                sp.close()
                sp = open_spool()
                assert sp.damage == []
                before = before_oldest = 0          # counters start again with the process
            got = list(sp)
            now = [r.seq for r in got]
            assert now == sorted(now)
            assert all(appended[r.seq] == (r.payload, r.key) for r in got)
            gone = [s for s in present if s > acked and s not in set(now)]
            step = sp.counters["dropped_oldest"] + sp.counters["dropped_conflated"] - before
            assert len(gone) == step, (gone, sp.counters)
            if sp.counters["dropped_oldest"] == before_oldest:       # only conflation ran
                for s in gone:
                    k = appended[s][1]
                    assert k is not None and any(t > s and appended[t][1] == k for t in appended)
            present = now
            assert sp.stats().fill_bytes <= 2400
            totals["dropped_oldest"] += sp.counters["dropped_oldest"] - before_oldest
            totals["dropped_conflated"] += step - (sp.counters["dropped_oldest"] - before_oldest)
        event(f"dropped oldest {totals['dropped_oldest'] > 0}, "
              f"conflated {totals['dropped_conflated'] > 0}")
    finally:
        sp.close(flush=False)
        shutil.rmtree(directory, ignore_errors=True)
