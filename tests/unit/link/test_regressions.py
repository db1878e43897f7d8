"""Regressions and small contracts of the link core.

A gap pushed out by the reorder window must not strand buffered frames below
the new expected seq (this once hung RX in an endless loop).
"""

import os

from agent.link import records
from agent.link.events import FramesLost, RecordReceived
from agent.link.receiver import LinkReceiver, ReceiverParams
from agent.link.sender import LinkSender, SenderParams
from agent.mqtt import codec as mqtt_codec


def _frames(n: int, key: bytes) -> list[bytes]:
    sender = LinkSender(SenderParams(repeat=1, interleave=1), key, epoch=1 << 32)
    out = []
    for i in range(n):
        sender.push(records.encode(mqtt_codec.MqttMessage("c", "t", i.to_bytes(4, "big"))), 0.0)
        sender.flush(0.0)
        out.extend(sender.pop_datagrams())
    return out


def test_window_overflow_delivers_frames_inside_the_gap_and_counts_only_missing() -> None:
    key = os.urandom(32)
    frames = _frames(40, key)
    rx = LinkReceiver(ReceiverParams(reorder_window=8, reorder_timeout=60), key)
    events = rx.receive(frames[0], 0.0)
    # 1..3 missing, 4 and 6 present, 5 missing, then frames far ahead push the window.
    for i in (4, 6, *range(10, 40)):
        events += rx.receive(frames[i], 0.0)
    got = [int.from_bytes(e.record.payload, "big") for e in events
           if isinstance(e, RecordReceived) and isinstance(e.record, mqtt_codec.MqttMessage)]
    lost = sum(e.count for e in events if isinstance(e, FramesLost))
    assert got == [0, 4, 6, *range(10, 40)]
    assert lost == 3 + 1 + 3  # 1-3, 5, 7-9
    assert rx.counters["lost"] == lost
    assert rx.handle_timer(1e9) == []  # nothing stranded: the timer has nothing to give up on
    assert rx.next_deadline() is None


def test_tags_are_released_once_their_frame_is_sealed() -> None:
    key = os.urandom(32)
    sender = LinkSender(SenderParams(mtu=400, linger=0.01), key, epoch=1 << 32)
    sender.push(records.encode(mqtt_codec.MqttMessage("c", "t", b"a" * 100)), 0.0, tag=1)
    sender.push(records.encode(mqtt_codec.MqttMessage("c", "t", b"b" * 100)), 0.0, tag=2)
    assert sender.pop_framed() == []  # still in the open frame
    sender.push(records.encode(mqtt_codec.MqttMessage("c", "t", b"c" * 300)), 0.0, tag=3)
    assert sender.pop_framed() == [1, 2]  # the third did not fit: the first frame closed
    sender.push(records.encode(mqtt_codec.MqttMessage("c", "t", b"d" * 5000)), 0.0, tag=4)
    assert sender.pop_framed() == [3]  # fragments close frames; 4 waits for its last one
    sender.handle_timer(1.0)
    assert sender.pop_framed() == [4]
