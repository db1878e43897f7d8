"""The datagram header (agent/link/wire.py) as the sender writes it and the receiver reads it."""

from __future__ import annotations

from agent.link import records, wire

from .core_kit import delivered, msg, sender
from .link_kit import feed, receiver


def test_heartbeat_flag_and_record_round_trip() -> None:
    tx = sender(repeat=1, interleave=1)
    hb = records.Heartbeat(12.5, 1.0, 1, {"datagrams": 4}, {"mqtt": "UP"})
    tx.push(records.encode(hb), 0.0, heartbeat=True)
    tx.flush(0.0)
    tx.push(records.encode(msg(1)), 0.0)
    tx.flush(0.0)
    first, second = tx.pop_datagrams()
    assert wire.parse_header(first).flags == wire.FLAG_HEARTBEAT
    assert wire.parse_header(second).flags == 0
    assert delivered(feed(receiver(), [first, second])) == [hb, msg(1)]
