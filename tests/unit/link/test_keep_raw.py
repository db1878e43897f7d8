"""keep_raw: each record comes with TX's own bytes of it, for a sink that stores it."""

from __future__ import annotations

import random

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.link import records, seal, wire
from agent.link.events import Event, RecordReceived
from agent.link.receiver import LinkReceiver

from .core_kit import EPOCH, delivered, msg, sender
from .link_kit import KEY, LINK_ID, feed, receiver


def keeping() -> LinkReceiver:
    rx = receiver()
    rx.keep_raw = True
    return rx


def test_kept_bytes_are_txs_own_for_packed_and_fragmented_records() -> None:
    rng = random.Random(7)
    recs = [msg(i, rng.choice((0, 10, 300, 1400, 5_000, 70_000))) for i in range(300)]
    tx = sender(repeat=2, interleave=4)
    on_wire: list[bytes] = []
    for i, rec in enumerate(recs):
        tx.push(records.encode(rec), i * 0.001)
        if rng.random() < 0.2:
            tx.flush(i * 0.001)
        on_wire += tx.pop_datagrams()
    on_wire += tx.drain(1.0)

    kept, plain = keeping(), receiver()
    got = feed(kept, on_wire)
    received = [e for e in got if isinstance(e, RecordReceived)]
    assert [e.record for e in received] == recs
    assert [e.raw for e in received] == [records.encode(r) for r in recs]
    assert delivered(feed(plain, on_wire)) == recs   # the same records either way
    assert kept.counters == plain.counters
    assert all(e.raw is None for e in feed(receiver(), on_wire)
               if isinstance(e, RecordReceived))


def frame(seq: int, body: bytes) -> bytes:
    """An authenticated frame of EPOCH holding `body` as it is."""
    header = wire.Header(wire.VERSION, 0, LINK_ID, EPOCH, seq).pack()
    return seal.seal(seal.derive_epoch_cipher(KEY, LINK_ID, EPOCH), header, seq, body)


def outcome(rx: LinkReceiver, datagrams: list[bytes]) -> tuple[list[Event], dict[str, int]]:
    events = [e if not isinstance(e, RecordReceived) else RecordReceived(e.record, e.epoch, e.seq)
              for e in feed(rx, datagrams)]
    return events, rx.counters


items = st.one_of(st.binary(max_size=40),                       # not CBOR, or not a record
                  st.builds(lambda i: records.encode(msg(i)), st.integers(0, 9)),
                  st.builds(lambda x: cbor2.dumps([1, x]), st.integers()))  # a bad record


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.binary(max_size=60),                                          # any bytes at all
    st.lists(items, max_size=4).map(lambda xs: wire.array_head(len(xs)) + b"".join(xs)),
    st.lists(items, max_size=4).map(lambda xs: b"\x9f" + b"".join(xs) + b"\xff"),
), min_size=1, max_size=4))
def test_authenticated_bodies_of_any_shape_give_the_same_outcome_kept_or_not(
        bodies: list[bytes]) -> None:
    datagrams = [frame(seq, body) for seq, body in enumerate(bodies)]
    kept_events, kept_counters = outcome(keeping(), datagrams)
    plain_events, plain_counters = outcome(receiver(), datagrams)
    assert kept_events == plain_events
    assert kept_counters == plain_counters
