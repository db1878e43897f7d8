"""The link receiver (agent/link/receiver.py): bad bytes are counted by reason and never
raised; reordered and duplicated datagrams deliver in order; gaps are given up in time.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.link import wire
from agent.link.events import FramesLost
from agent.link.receiver import REJECT_REASONS, LinkReceiver
from agent.transport.lossy import LossyChannel

from .core_kit import (
    EPOCH,
    OLD_EPOCH,
    OTHER_KEY,
    Pump,
    delivered,
    msg,
    one_frame_per_record,
    sender,
    single_copies,
)
from .link_kit import LINK_ID, feed, receiver

# --- bad bytes are counted, never raised ----------------------------------------

# Genuine datagrams: OLD_EPOCH frame 0, then EPOCH frames 0..LIVE_NEXT+5 (repeat 1).
LIVE_NEXT = 6
GENUINE_OLD = single_copies(1, OLD_EPOCH)
GENUINE = single_copies(LIVE_NEXT + 6)
UNSEEN = GENUINE[LIVE_NEXT:]   # genuine, not yet fed to the live receiver
TRACKED = ("datagrams", "valid", "frames", "records", "duplicates", "late", "lost",
           "resent_skipped", *REJECT_REASONS)


def live_receiver(now: float = 0.0) -> LinkReceiver:
    """Current epoch EPOCH with frames 0..LIVE_NEXT-1 delivered, OLD_EPOCH retired."""
    rx = receiver()
    feed(rx, GENUINE_OLD + GENUINE[:LIVE_NEXT], now)
    assert rx.epoch == EPOCH and rx.counters["frames"] == LIVE_NEXT + 1
    return rx


def expected_reason(datagram: bytes, rx: LinkReceiver, now: float) -> str:
    """Why the receiver must drop this (forged or damaged) datagram.

    Whatever its header says (the live epoch and an old seq, a retired epoch, an
    older one), a datagram that does not authenticate counts as `auth_failed`
    and nothing else: counted as a duplicate it would hide loss.
    """
    if len(datagram) < wire.MIN_DATAGRAM:
        return "truncated"
    h = wire.parse_header(datagram)
    if h.version != wire.VERSION:
        return "bad_version"
    if h.flags & ~wire.KNOWN_FLAGS:
        return "bad_flags"
    if h.link_id != LINK_ID:
        return "wrong_link"
    if h.flags & wire.FLAG_RESENT:
        # a resent copy of no frame RX misses is skipped from its header, never opened
        return "resent_skipped"
    return "auth_failed"


def assert_rejected(rx: LinkReceiver, datagram: bytes, reason: str, now: float = 0.0) -> None:
    before = {k: rx.counters[k] for k in TRACKED}
    events = rx.receive(datagram, now)
    assert events == []
    diff = {k: rx.counters[k] - before[k] for k in TRACKED if rx.counters[k] != before[k]}
    assert diff == {"datagrams": 1, reason: 1}


def assert_still_works(rx: LinkReceiver) -> None:
    got = delivered(feed(rx, UNSEEN))
    assert got == [msg(i) for i in range(LIVE_NEXT, LIVE_NEXT + len(UNSEEN))]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_and_are_counted(data: bytes) -> None:
    for rx in (receiver(), live_receiver()):
        assert_rejected(rx, data, expected_reason(data, rx, 0.0))
        if rx.epoch is not None:
            assert_still_works(rx)


header_fields = st.fixed_dictionaries({
    "flags": st.sampled_from([0, wire.FLAG_HEARTBEAT]),
    "epoch": st.one_of(st.sampled_from([EPOCH, OLD_EPOCH, EPOCH - 1, EPOCH + 1]),
                       st.integers(0, 2**64 - 1)),
    "seq": st.one_of(st.integers(0, LIVE_NEXT + 10), st.integers(0, 2**64 - 1)),
})


@settings(max_examples=300, deadline=None)
@given(header_fields, st.binary(max_size=300), st.booleans())
def test_forged_body_behind_valid_header_is_rejected(fields: dict[str, int], body: bytes,
                                                     live: bool) -> None:
    header = wire.Header(wire.VERSION, fields["flags"], LINK_ID, fields["epoch"],
                         fields["seq"]).pack()
    datagram = header + body
    rx = live_receiver() if live else receiver()
    assert_rejected(rx, datagram, expected_reason(datagram, rx, 0.0))
    if live:
        assert_still_works(rx)


def _mutate(data: st.DataObject, original: bytes) -> bytes:
    kind = data.draw(st.sampled_from(["truncate", "flip", "append", "flip+append"]))
    if kind == "truncate":
        return original[:data.draw(st.integers(0, len(original) - 1))]
    out = bytearray(original)
    if kind.startswith("flip"):
        bits = data.draw(st.sets(st.integers(0, len(original) * 8 - 1), min_size=1, max_size=4))
        for bit in bits:
            out[bit // 8] ^= 0x80 >> (bit % 8)
    if kind.endswith("append"):
        out += data.draw(st.binary(min_size=1, max_size=40))
    return bytes(out)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.sampled_from(UNSEEN), st.booleans(), st.sampled_from([0.0, 3.0]))
def test_mutated_datagrams_are_rejected_with_the_right_reason(
        data: st.DataObject, original: bytes, live: bool, later: float) -> None:
    mutated = _mutate(data, original)
    rx = live_receiver() if live else receiver()
    assert_rejected(rx, mutated, expected_reason(mutated, rx, later), later)
    if live:
        assert_still_works(rx)


def test_each_reject_reason_in_turn() -> None:
    rx = live_receiver()
    good = UNSEEN[0]
    h = wire.parse_header(good)

    def with_header(**changes: int) -> bytes:
        fields = {"version": h.version, "flags": h.flags, "link_id": h.link_id,
                  "epoch": h.epoch, "seq": h.seq, **changes}
        return wire.Header(**fields).pack() + good[wire.HEADER_SIZE:]

    assert_rejected(rx, good[:wire.MIN_DATAGRAM - 1], "truncated")
    assert_rejected(rx, b"", "truncated")
    assert_rejected(rx, with_header(version=2), "bad_version")
    assert_rejected(rx, with_header(flags=0x04), "bad_flags")
    assert_rejected(rx, with_header(link_id=LINK_ID + 1), "wrong_link")
    assert_rejected(rx, with_header(flags=wire.FLAG_HEARTBEAT), "auth_failed")
    assert_rejected(rx, with_header(seq=h.seq + 1), "auth_failed")
    assert_rejected(rx, good + b"\0", "auth_failed")
    assert_rejected(rx, good[:-1], "auth_failed")
    # Sealed under another key: well formed, but not ours.
    foreign = one_frame_per_record(sender(EPOCH, repeat=1, interleave=1, key=OTHER_KEY),
                                   [msg(i) for i in range(LIVE_NEXT + 1)])[-1]
    assert_rejected(rx, foreign, "auth_failed")
    newer_foreign = one_frame_per_record(
        sender(EPOCH + 9, repeat=1, interleave=1, key=OTHER_KEY), [msg(0)])[0]
    assert_rejected(rx, newer_foreign, "auth_failed")
    assert rx.epoch == EPOCH
    assert_rejected(rx, with_header(epoch=EPOCH - 1), "auth_failed")   # forged: not stale
    assert_rejected(rx, with_header(seq=0), "auth_failed")            # forged: no duplicate
    assert_rejected(rx, GENUINE_OLD[0], "replayed")
    assert_rejected(rx, single_copies(1, EPOCH - 1)[0], "stale_epoch")  # genuine, older epoch
    assert_still_works(rx)


# --- reorder and duplication ---------------------------------------------------------


@pytest.mark.parametrize(("repeat", "window"), [(1, 4), (3, 6), (2, 30)])
def test_reordered_within_a_small_window_delivers_everything_in_order(repeat: int,
                                                                      window: int) -> None:
    recs = [msg(i, i % 300) for i in range(500)]
    datagrams = one_frame_per_record(sender(repeat=repeat, interleave=8), recs)
    rng = random.Random(window)
    # The first datagram goes first: a fresh receiver joins the stream where it
    # first hears it (see test_fresh_receiver_joins_where_it_first_hears in test_epochs.py).
    jitter = [0] + sorted(range(1, len(datagrams)), key=lambda i: i + rng.uniform(0, window))
    assert jitter != list(range(len(datagrams)))
    rx = receiver()
    events = feed(rx, (datagrams[i] for i in jitter))
    assert delivered(events) == recs
    assert rx.counters["lost"] == 0


def test_lossy_channel_reorder_duplicate_corrupt() -> None:
    channel = LossyChannel(seed=9, reorder=0.2, duplicate=0.1, corrupt=0.02)
    pump = Pump(sender(repeat=3, interleave=8), receiver(), channel.transmit)
    recs = [msg(i, 40) for i in range(3000)]
    for rec in recs:
        pump.step(rec)
    pump.finish()
    pump.events += feed(pump.rx, channel.drain(), pump.now)
    assert delivered(pump.events) == recs
    assert pump.rx.counters["auth_failed"] > 0     # the corrupted copies
    assert pump.rx.counters["lost"] == 0


# --- gap timeout -----------------------------------------------------------------------


def test_gap_is_declared_lost_after_reorder_timeout_and_late_copy_counted() -> None:
    timeout = 0.5
    rx = receiver(reorder_timeout=timeout)
    d = single_copies(6)
    assert delivered(feed(rx, d[:2], now=1.0)) == [msg(0), msg(1)]
    assert rx.next_deadline() is None
    assert feed(rx, [d[3], d[4]], now=1.1) == []          # frame 2 missing
    assert rx.next_deadline() == pytest.approx(1.1 + timeout)
    assert rx.handle_timer(1.1 + timeout - 0.01) == []
    events = rx.handle_timer(1.1 + timeout)
    assert events[0] == FramesLost(EPOCH, 2, 1)
    assert delivered(events) == [msg(3), msg(4)]
    assert rx.next_deadline() is None
    for _ in range(2):
        assert rx.receive(d[2], 2.0) == []
    assert rx.counters["late"] == 2 and rx.counters["duplicates"] == 0
    assert delivered(rx.receive(d[5], 2.0)) == [msg(5)]


def test_gap_timer_counts_from_the_first_frame_that_revealed_it() -> None:
    # Frame 5 reveals the gap 2..4 at t=1.0; frame 3 arrives later, at t=1.2.
    # The gap must be given up at 1.5 as next_deadline() says, not at 1.7.
    rx = receiver(reorder_timeout=0.5)
    d = single_copies(6)
    feed(rx, d[:2], now=0.0)
    feed(rx, [d[5]], now=1.0)
    feed(rx, [d[3]], now=1.2)
    deadline = rx.next_deadline()
    assert deadline == pytest.approx(1.5)
    events = rx.handle_timer(deadline)  # type: ignore[arg-type]
    assert [e for e in events if isinstance(e, FramesLost)] == [
        FramesLost(EPOCH, 2, 1), FramesLost(EPOCH, 4, 1)]
    assert delivered(events) == [msg(3), msg(5)]
    assert rx.next_deadline() is None


def test_gap_beyond_reorder_window_is_lost_without_timer() -> None:
    rx = receiver(reorder_window=8)
    d = single_copies(20)
    events = feed(rx, d[:3] + d[4:12])
    assert FramesLost(EPOCH, 3, 1) in events
    assert delivered(events) == [msg(i) for i in range(12) if i != 3]
