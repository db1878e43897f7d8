"""The recovery window, sans-IO: TX's window (agent/link/recovery.py), RX's record of what
it missed (agent/link/missed.py) and the receiver between them."""

from __future__ import annotations

import pytest

from agent.link import records, seal, wire
from agent.link.events import EpochChanged, FramesLost, RecordReceived
from agent.link.missed import MAX_TRACKED, Missed
from agent.link.recovery import RecoveryParams, RecoveryWindow

from .link_kit import KEY, LINK_ID, T0, Tx, epoch_at, feed, forged, message, outcomes, receiver

EPOCH = epoch_at(T0)


def dg(seq: int, size: int = 100) -> bytes:
    return seq.to_bytes(8, "big") + bytes(size - 8)


def seqs(due: list[tuple[int, int, int, bytes]]) -> list[int]:
    return [seq for seq, _, _, _ in due]


# -- TX: the window -----------------------------------------------------------------------


def test_window_cycles_oldest_first_once_frames_are_old_enough() -> None:
    w = RecoveryWindow(RecoveryParams(seconds=60, max_bytes=1 << 20, min_age=1.0, min_cycle=2.0))
    for i in range(5):
        w.keep(i, dg(i), 10.0 + i * 0.1)
    assert w.take(10.5, 1 << 20) == []          # nothing is a second old yet
    assert w.next_due(10.5) == pytest.approx(11.0)
    assert seqs(w.take(11.25, 1 << 20)) == [0, 1, 2]  # 3 and 4 are younger than min_age
    assert seqs(w.take(11.25, 1 << 20)) == []       # the cycle ended at a young frame
    assert w.next_due(11.25) == pytest.approx(13.25)
    assert seqs(w.take(13.25, 300)) == [0, 1]       # a new cycle: 144 bytes a re-send
    assert seqs(w.take(13.3, 1 << 20)) == [2, 3, 4]
    assert w.counters["resent"] == 8 and w.counters["recovery_cycles"] == 2
    # (seq, k, age in ms, body): the k-th re-send of a frame, and how long it waited
    assert w.take(20.0, 1 << 20)[0] == (0, 2, 10_000, dg(0))


def test_window_forgets_by_age_and_by_bytes() -> None:
    w = RecoveryWindow(RecoveryParams(seconds=5, max_bytes=1000, min_age=0, min_cycle=0))
    for i in range(8):
        w.keep(i, dg(i), float(i))
    assert w.oldest(7.0, 8) == 2                   # 0 and 1 are older than 5 s
    for i in range(8, 20):
        w.keep(i, dg(i), 7.0)
    assert w.bytes <= 1000 and w.oldest(7.0, 20) == 10  # the bytes bound: the newest ten
    assert seqs(w.take(7.0, 1 << 20)) == list(range(10, 20))
    assert w.oldest(100.0, 20) == 20 and w.bytes == 0 and w.next_due(100.0) is None
    assert w.counters["recovery_evicted"] == 20


def test_window_cursor_survives_eviction_under_it() -> None:
    w = RecoveryWindow(RecoveryParams(seconds=10, max_bytes=1 << 20, min_age=0, min_cycle=0))
    for i in range(6):
        w.keep(i, dg(i), float(i))
    assert seqs(w.take(6.0, 300)) == [0, 1]
    assert seqs(w.take(13.0, 1 << 20)) == [3, 4, 5]  # 2 left meanwhile: the cycle goes on


def test_each_resend_is_sealed_anew_with_its_count_and_age() -> None:
    tx, plain = Tx(EPOCH, recovery=True), Tx(EPOCH)
    live = tx.frame(message("a", 1), now=5.0)
    assert live == plain.frame(message("a", 1), now=5.0)   # the live frame: the same bytes
    first, second = tx.sender.resend(6.5, 1 << 20), tx.sender.resend(8.0, 1 << 20)
    cipher = seal.derive_epoch_cipher(KEY, LINK_ID, EPOCH)
    body = seal.open_sealed(cipher, live[0], wire.HEADER_SIZE, 0)
    for [d], k, age_ms in ((first, 0, 1500), (second, 1, 3000)):
        h = wire.parse_header(d)
        assert h.flags == wire.FLAG_RESENT and h.seq == 0 and d[20:24] == k.to_bytes(4, "big")
        assert seal.open_sealed(cipher, d, wire.HEADER_SIZE, 0) is None   # not as live
        assert seal.open_resent(cipher, d, wire.HEADER_SIZE, 0) == (age_ms, body)
    # each under its own nonce: the same body twice gives other ciphertext
    assert first[0][24:] != second[0][24:]
    # k and the age are authenticated: changing either fails
    bumped = first[0][:23] + b"\x01" + first[0][24:]
    assert seal.open_resent(cipher, bumped, wire.HEADER_SIZE, 0) is None


# -- RX: what it missed -------------------------------------------------------------------


def test_missed_frames_are_wanted_once_and_given_up_below_a_seq() -> None:
    m = Missed(10, 20, owed=True)
    assert m.wanted == 10 and m.wants(10) and m.wants(19) and not m.wants(20)
    m.got(12)
    assert not m.wants(12) and m.wanted == 9
    assert m.give_up_below(15) == (10, 4)          # 10, 11, 13, 14
    assert m.lo == 15 and m.wanted == 5 and not m.wants(14)
    assert m.give_up_below(3) == (15, 0)
    assert m.give_up_below(99) == (15, 5) and m.done


def test_missed_tracks_at_most_max_tracked_frames() -> None:
    m = Missed(0, MAX_TRACKED + 5, owed=True)
    assert m.untracked == 5 and m.wanted == MAX_TRACKED and m.wants(5) and not m.wants(4)


# -- RX: the receiver across a restart ----------------------------------------------------


def restarted(tx: Tx, had: int, down: range) -> tuple[object, list[RecordReceived]]:
    """An RX that had frames 0..had-1, was killed, and came back as `down` ended."""
    rx1 = receiver()
    feed(rx1, tx.frames("m", range(had)))
    memory = rx1.memory()
    tx.frames("m", down)                          # sent while RX was away
    rx2 = receiver(memory)
    events = feed(rx2, tx.frames("m", range(down.stop, down.stop + 3)))
    return rx2, events


def test_a_restarted_rx_gets_what_it_missed_once_from_the_window() -> None:
    tx = Tx(EPOCH, recovery=True)
    rx, events = restarted(tx, 10, range(10, 20))
    assert isinstance(events[0], EpochChanged)
    assert [e.seq for e in events if isinstance(e, RecordReceived)] == [20, 21, 22]
    assert rx.missing == 10 and rx.memory().seen[-1][1] == 9  # still fresh after a restart
    got = feed(rx, tx.resent(range(0, 23)))          # a whole cycle of the window
    recovered = [e for e in got if isinstance(e, RecordReceived)]
    assert [(e.seq, e.recovered) for e in recovered] == [(s, True) for s in range(10, 20)]
    assert [e.record for e in recovered] == [message("m", i) for i in range(10, 20)]
    c = rx.counters
    assert c["recovered"] == c["resent_used"] == 10 and c["resent_skipped"] == 13
    assert rx.missing == 0 and c["lost"] == 0 and c["missed"] == 0
    assert feed(rx, tx.resent(range(10, 20))) == []  # never twice
    assert rx.memory().seen[-1][1] == 22
    assert outcomes(rx) == c["datagrams"]


def test_what_left_the_window_is_lost_and_counted_at_the_next_heartbeat() -> None:
    tx = Tx(EPOCH, recovery=True)
    rx, _ = restarted(tx, 10, range(10, 20))
    feed(rx, tx.resent(range(16, 20)))
    beats = [e.record for e in feed(rx, tx.heartbeat()) if isinstance(e, RecordReceived)]
    assert beats and rx.missing == 6   # the RX core hands each heartbeat back (below)
    events = rx.heartbeat(records.Heartbeat(0.0, 1.0, 1, {"recovery_oldest": 14}, {}))
    assert events == [FramesLost(EPOCH, 10, 4, while_away=True)]
    assert rx.counters["lost"] == rx.counters["missed"] == 4 and rx.missing == 2
    # a TX without a window says nothing: RX gives up all it still misses
    events = rx.heartbeat(records.Heartbeat(0.0, 1.0, 1, {}, {}))
    assert events == [FramesLost(EPOCH, 14, 2, while_away=True)]
    assert rx.counters["missed"] == 6 and rx.missing == 0


def test_a_fresh_rx_takes_the_window_but_is_owed_nothing() -> None:
    tx = Tx(EPOCH, recovery=True)
    tx.frames("m", range(30))                      # before RX ever ran
    rx = receiver()
    feed(rx, tx.frames("m", range(30, 32)))
    assert rx.missing == 30
    got = feed(rx, tx.resent(range(20, 30)))
    # delivered, but unplaced: an earlier RX may have delivered them, and newer ones
    assert [(e.recovered, e.unplaced) for e in got if isinstance(e, RecordReceived)] == \
        [(True, True)] * 10
    assert rx.heartbeat(records.Heartbeat(0.0, 1.0, 1, {"recovery_oldest": 20}, {})) == []
    assert rx.missing == 0 and rx.counters["lost"] == 0 and rx.counters["missed"] == 0


def test_forged_and_replayed_resent_copies_deliver_nothing_twice() -> None:
    tx = Tx(EPOCH, recovery=True)
    rx, _ = restarted(tx, 10, range(10, 20))
    c = rx.counters
    # a forged body behind a resent header RX wants: opened, fails, still wanted
    assert rx.receive(forged(EPOCH, 12, flags=wire.FLAG_RESENT), 0.0) == []
    assert c["auth_failed"] == 1 and rx.missing == 10
    # a live frame's bytes with the RESENT flag set: the nonce differs, it fails too
    live_copy = bytearray(tx.frames("x", [0])[0])
    live_copy[1] = wire.FLAG_RESENT
    live_copy[12:20] = (13).to_bytes(8, "big")
    assert rx.receive(bytes(live_copy), 0.0) == [] and c["auth_failed"] == 2
    [copy] = tx.resent([12])
    assert len(rx.receive(copy, 0.0)) == 1
    for _ in range(3):                              # the same copy replayed
        assert rx.receive(copy, 0.0) == []
    assert c["recovered"] == 1 and c["resent_skipped"] == 3
    # resent copies of another epoch, and of frames RX had, are skipped unopened
    other = Tx(epoch_at(T0 - 60), recovery=True)
    other.frames("o", range(3))
    assert feed(rx, other.resent(range(3)) + tx.resent(range(5))) == []
    assert c["resent_skipped"] == 11 and c["auth_failed"] == 2
    assert outcomes(rx) == c["datagrams"]


def test_a_late_live_copy_of_a_missed_frame_is_delivered_once() -> None:
    tx = Tx(EPOCH, repeat=2, recovery=True)
    first = tx.frames("m", range(4))               # two copies each
    rx = receiver()
    feed(rx, first[6:])                            # RX joins at frame 3
    got = feed(rx, first[:6])
    assert [(e.seq, e.recovered) for e in got if isinstance(e, RecordReceived)] == \
        [(0, True), (1, True), (2, True)]
    assert rx.missing == 0 and rx.counters["recovered"] == 3


def test_fragments_of_a_recovered_record_do_not_mix_with_live_ones() -> None:
    tx = Tx(EPOCH, recovery=True)
    rx1 = receiver()
    feed(rx1, tx.frames("m", range(2)))
    memory = rx1.memory()
    big = records.encode(message("big", 1)._replace(payload=bytes(5000)))
    tx.sender.push(big, 0.0)
    missed = tx.sender.drain(0.0)                  # four or so frames, sent while RX is away
    rx = receiver(memory)
    live_big = records.encode(message("big", 2)._replace(payload=bytes(5000)))
    tx.sender.push(live_big, 0.0)
    live = tx.sender.drain(0.0)
    resent = tx.resent(range(2, 2 + len(missed)))
    # resent fragments between the live ones: both records come whole
    mixed = [d for pair in zip(live, resent, strict=False) for d in pair]
    mixed += live[len(resent):] + resent[len(live):]
    events = feed(rx, mixed)
    got = {(e.record.topic, e.recovered) for e in events if isinstance(e, RecordReceived)}
    assert got == {("big/1", True), ("big/2", False)}
    assert rx.counters["fragments_dropped"] == 0
