"""Loss figures that forged or replayed packets cannot mask.

RX's datagram loss compares TX's count of datagrams sent (in its heartbeats)
with what RX received of the followed epoch, `valid + duplicates` (as agent/rx.py
does). Only authenticated datagrams may count there, a copy only up to the
`repeat` TX announces, and nothing of another epoch.
"""

from __future__ import annotations

import random
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.link import records, seal, wire
from agent.link.events import Event, RecordReceived
from agent.link.health import HealthParams, LinkHealth
from agent.link.receiver import LinkReceiver
from agent.link.sender import LinkSender, SenderParams
from agent.transport.lossy import LossyChannel

from .link_kit import KEY, LINK_ID, T0, Tx, epoch_at, feed, forged, message, outcomes, receiver, topics

EPOCH = epoch_at(T0)


def _lossy_run(loss: float, inject: str, frames: int = 6000, seed: int = 3
               ) -> tuple[float, LinkReceiver, int]:
    """A heartbeat every 100 frames, `loss` on the wire, and per surviving datagram
    one injected datagram: `forged` (its header with a random body), `replay` (a
    datagram recorded 2000 frames earlier) or nothing. Returns RX's datagram loss
    as agent/rx.py computes it, the receiver, and how many were injected."""
    tx = LinkSender(SenderParams(link_id=LINK_ID, repeat=3, interleave=8), KEY, EPOCH)
    rx = receiver()
    health = LinkHealth(HealthParams(window=1e9))
    channel = LossyChannel(seed, loss=loss)
    rng = random.Random(seed)
    recorded: list[bytes] = []
    injected = 0
    now = 0.0

    def take(events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, RecordReceived) and isinstance(ev.record, records.Heartbeat):
                c = rx.counters
                health.on_heartbeat(ev.record, c["valid"] + c["duplicates"], now)

    for step in range(frames):
        now += 0.002
        deadline = rx.next_deadline()
        if deadline is not None and deadline <= now:
            take(rx.handle_timer(now))
        tx.push(records.encode(message("m", step)), now)
        if step % 100 == 0:
            def beat(t: float = now) -> bytes:
                return records.encode(records.Heartbeat(t, 1.0, 3, dict(tx.counters), {}))
            tx.push_heartbeat(beat, now)
        tx.flush(now)
        for d in tx.pop_datagrams():
            recorded.append(d)
            for survivor in channel.transmit(d):
                wire_in = [survivor]
                if inject == "forged":
                    h = wire.parse_header(survivor)
                    wire_in.append(forged(h.epoch, h.seq, len(survivor) - wire.HEADER_SIZE))
                elif inject == "replay" and len(recorded) > 6100:
                    wire_in.append(recorded[len(recorded) - 6000 - rng.randrange(100)])
                injected += len(wire_in) - 1
                for d2 in wire_in:
                    take(rx.receive(d2, now))
    return health.datagram_loss(), rx, injected


@pytest.fixture(scope="module")
def clean_30() -> tuple[float, LinkReceiver, int]:
    return _lossy_run(0.3, "none")


def test_forged_datagrams_count_as_auth_failed_and_hide_no_loss(clean_30) -> None:
    # The figures: at 30 % loss, forged datagrams of the live epoch with old
    # seqs took datagram_loss from 0.29 to 0.0, counted as duplicates unopened.
    loss, clean_rx, _ = clean_30
    forged_loss, rx, injected = _lossy_run(0.3, "forged")
    assert 0.25 < loss < 0.32   # sampled as heartbeats are delivered: near the 0.30 sent
    assert forged_loss == pytest.approx(loss, abs=1e-9)
    assert rx.counters["auth_failed"] == injected > 10_000
    assert rx.counters["duplicates"] == clean_rx.counters["duplicates"]
    assert rx.counters["valid"] == clean_rx.counters["valid"]
    assert outcomes(rx) == rx.counters["datagrams"]


def test_replayed_datagrams_count_as_replayed_and_hide_no_loss(clean_30) -> None:
    loss, clean_rx, _ = clean_30
    replayed_loss, rx, injected = _lossy_run(0.3, "replay")
    assert replayed_loss == pytest.approx(loss, abs=1e-9)
    # 2000 frames back: no longer a copy RX keeps; authenticated, and had (`replayed`)
    # or given up as lost long ago (`late`: never delivered either).
    assert rx.counters["replayed"] + rx.counters["late"] - clean_rx.counters["late"] \
        == injected > 5_000
    assert rx.counters["replayed"] > 0.9 * injected
    assert rx.counters["duplicates"] == clean_rx.counters["duplicates"]
    assert rx.counters["frames"] == clean_rx.counters["frames"]


def test_copies_beyond_the_announced_repeat_are_replays() -> None:
    tx = Tx(EPOCH, repeat=3)
    rx = receiver()
    feed(rx, tx.heartbeat())                   # announces repeat 3
    copies = tx.frame(message("m", 1))
    assert len(copies) == 3
    feed(rx, copies + copies + copies[:1])
    assert rx.counters["valid"] == 2 and rx.counters["duplicates"] == 2 + 2
    assert rx.counters["replayed"] == 4
    # Before any heartbeat RX believes up to max_copies.
    fresh = receiver(max_copies=2)
    feed(fresh, copies)
    assert fresh.counters["duplicates"] == 1 and fresh.counters["replayed"] == 1


def test_recent_replayed_copies_fill_frames_only_up_to_repeat() -> None:
    """The limit that remains (agent/link/epochs.py): copies are byte-identical, so a
    recorded copy of a recent frame sent again looks like the copy that was lost.
    It can fill each frame up to `repeat`, no further, and never a lost frame."""
    tx = Tx(EPOCH, repeat=3)
    rx = receiver()
    feed(rx, tx.heartbeat())                       # announces repeat 3
    wire_in = [tx.frame(message("m", i))[0] for i in range(200)]  # 2 copies of each lost
    feed(rx, wire_in)
    feed(rx, wire_in * 4)                          # the attacker sends each 4 more times
    assert rx.counters["valid"] == 201
    assert rx.counters["duplicates"] == 2 + 2 * 200    # up to repeat, no further
    assert rx.counters["replayed"] == 2 * 200


def test_a_genuine_copy_costs_no_aes_open(monkeypatch: pytest.MonkeyPatch) -> None:
    tx = LinkSender(SenderParams(link_id=LINK_ID, repeat=3, interleave=8), KEY, EPOCH)
    for i in range(300):
        tx.push(records.encode(message("m", i)), 0.0)
        tx.flush(0.0)
    datagrams = tx.drain(0.0)
    opened = []
    real = seal.open_sealed

    def counting(*args: object) -> bytes | None:
        opened.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(seal, "open_sealed", counting)
    rx = receiver()
    feed(rx, datagrams)
    assert rx.counters["valid"] == 300 and rx.counters["duplicates"] == 600
    assert len(opened) == 300   # copies are compared with the kept datagram instead


def test_frames_of_an_epoch_rx_does_not_follow_never_count_as_received() -> None:
    live, older = Tx(EPOCH), Tx(epoch_at(T0 - 3600))
    rx = receiver()
    feed(rx, live.frames("live", range(5)))
    before = rx.counters["valid"] + rx.counters["duplicates"]
    feed(rx, older.frames("old", range(50)) * 2, now=0.5)
    assert rx.counters["valid"] + rx.counters["duplicates"] == before
    assert rx.counters["stale_epoch"] == 100


def test_late_and_replayed_are_told_apart() -> None:
    tx = Tx(EPOCH)
    d = tx.frames("m", range(6))
    rx = receiver(reorder_timeout=0.5)
    feed(rx, d[1:3], now=0.0)     # joins at 1: frame 0 was sent before RX joined
    feed(rx, d[4:], now=0.1)      # frame 3 missing
    rx.handle_timer(1.0)          # ...given up
    feed(rx, [d[0], d[3]], now=2.0)
    # Frame 0, sent just before RX joined, is not delivered, but the link carried it
    # (TX counted it): a duplicate. Frame 3 came after its gap was given up: late.
    assert rx.counters["late"] == 1 and rx.counters["replayed"] == 0
    assert rx.counters["duplicates"] == 1
    feed(rx, [d[1]], now=2.0)     # a copy of one it has
    assert rx.counters["duplicates"] == 2
    assert topics(feed(rx, d, now=3.0)) == []


# Arbitrary datagrams: genuine, altered, foreign, random, in any order.
POOL = (Tx(EPOCH, repeat=2).frames("m", range(8)) + Tx(epoch_at(T0 - 60)).frames("o", range(4))
        + Tx(epoch_at(T0 + 60), key=bytes(32)).frames("f", range(2)))


def _altered(d: bytes, n: int) -> bytes:
    b = bytearray(d)
    b[n % len(b)] ^= 1 << (n % 8)
    return bytes(b)


datagram = st.one_of(st.sampled_from(POOL), st.binary(max_size=120),
                     st.builds(_altered, st.sampled_from(POOL), st.integers(0, 10_000)),
                     st.builds(lambda e, s, n: forged(e, s, n),
                               st.sampled_from([EPOCH, EPOCH - 1, epoch_at(T0 - 60)]),
                               st.integers(0, 20), st.integers(1, 200)))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(datagram, st.floats(0, 20)), max_size=40))
def test_every_datagram_ends_in_exactly_one_counter_and_none_raises(
        seq: list[tuple[bytes, float]]) -> None:
    rx = receiver()
    for d, t in sorted(seq, key=lambda x: x[1]):
        rx.receive(d, t)
        assert outcomes(rx) == rx.counters["datagrams"]
    rx.handle_timer(100.0)


def test_the_receiver_holds_no_datagram_it_was_handed() -> None:
    """A driver's datagram may sit in a much larger allocation (UDP: recv(65535),
    shrunk in place); kept for copy checks or on probation it would pin all of it
    (26 MB for 1024 of them). RX keeps compact copies instead."""
    live, older = Tx(EPOCH, repeat=3), Tx(epoch_at(T0 - 3600))
    rx = receiver()
    handed = live.frame(message("m", 0)) + older.frame(message("old", 0))
    before = [sys.getrefcount(d) for d in handed]
    feed(rx, handed, now=0.0)
    assert rx.counters["valid"] == 1 and rx.counters["stale_epoch"] == 1
    assert [sys.getrefcount(d) for d in handed] == before
