"""Authenticated frames whose body is no record (agent/link/records.py's decode): counted
as bad records, never raised.
"""

from __future__ import annotations

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.link import records
from agent.link.events import RecordReceived
from agent.mqtt import codec as mqtt_codec

from .core_kit import delivered, msg, sender
from .link_kit import feed, receiver

# Authenticated frames whose body is garbage (a TX bug or version skew).
cbor_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                      st.floats(allow_nan=True), st.text(max_size=8),
                      st.binary(max_size=16))
cbor_value = st.recursive(cbor_leaf, lambda inner: st.lists(inner, max_size=6)
                          | st.dictionaries(st.text(max_size=4), inner, max_size=4),
                          max_leaves=20)
record_like = st.tuples(st.integers(-1, 4), st.lists(cbor_value, max_size=8)).map(
    lambda t: cbor2.dumps([t[0], *t[1]]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(record_like, st.binary(max_size=2000),
                          cbor_value.map(cbor2.dumps)), min_size=1, max_size=5))
def test_authenticated_garbage_records_never_raise(items: list[bytes]) -> None:
    tx = sender(repeat=1, interleave=1, mtu=600)
    for item in items:
        tx.push(item, 0.0)
    tx.push(records.encode(msg(99)), 0.0)
    datagrams = tx.drain(0.0)
    rx = receiver()
    events = feed(rx, datagrams)
    assert rx.counters["valid"] == len(datagrams)
    for event in events:
        if isinstance(event, RecordReceived):
            assert isinstance(event.record, records.Heartbeat | mqtt_codec.MqttMessage)


def test_authenticated_overflowing_numbers_are_bad_records() -> None:
    tx = sender(repeat=1, interleave=1)
    for item in ([0, 2**2000, 1.0, 1, {}, {}], [0, 1.0, 1.0, float("inf"), {}, {}],
                 [2, float("inf"), 0, 1, b""]):
        tx.push(cbor2.dumps(item), 0.0)
    tx.push(records.encode(msg(1)), 0.0)
    rx = receiver()
    events = feed(rx, tx.drain(0.0))
    assert rx.counters["bad_record"] == 3
    assert delivered(events) == [msg(1)]
