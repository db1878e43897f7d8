"""The link core in memory, for the tests of agent/link: LinkSender -> (damage) -> LinkReceiver.

No sockets and no clocks: every call gets a simulated `now`, loss comes from
seeded generators, so each run replays the same damage. Data records are MQTT
messages built in `msg`; the receiver, `feed` and the key are link_kit's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from agent.link import records
from agent.link.events import Event, FramesLost, RecordReceived
from agent.link.receiver import LinkReceiver
from agent.link.sender import LinkSender, SenderParams
from agent.mqtt import codec as mqtt_codec

from .link_kit import KEY, LINK_ID

OTHER_KEY = bytes(range(1, 33))
EPOCH = (1_700_000_000 << 32) | 0x5EED
OLD_EPOCH = EPOCH - (5 << 32)  # an earlier TX run's
TICK = SenderParams().tick


def sender(epoch: int = EPOCH, *, repeat: int = 3, interleave: int = 8, mtu: int = 1400,
           key: bytes = KEY) -> LinkSender:
    params = SenderParams(link_id=LINK_ID, mtu=mtu, repeat=repeat, interleave=interleave)
    return LinkSender(params, key, epoch)


def msg(index: int, size: int = 16) -> mqtt_codec.MqttMessage:
    body = index.to_bytes(4, "big")
    payload = (body * (size // 4 + 1))[:size]
    return mqtt_codec.MqttMessage("ch", f"t/{index}", payload, qos=1, retain=index % 2 == 0)


def frames_of(tx: LinkSender, recs: Iterable[records.Record], now: float = 0.0,
              dt: float = TICK) -> list[list[bytes]]:
    """Push each record as its own frame; the datagrams of each interleaver step."""
    steps: list[list[bytes]] = []
    for rec in recs:
        tx.push(records.encode(rec), now)
        tx.flush(now)
        steps.append(tx.pop_datagrams())
        now += dt
    return steps


def one_frame_per_record(tx: LinkSender, recs: Iterable[records.Record]) -> list[bytes]:
    """Datagrams in wire order, all copies included, one frame per record."""
    out = [d for step in frames_of(tx, recs) for d in step]
    return out + tx.drain(0.0)


def delivered(events: Iterable[Event]) -> list[records.Record]:
    return [e.record for e in events if isinstance(e, RecordReceived)]


def lost_total(events: Iterable[Event]) -> int:
    return sum(e.count for e in events if isinstance(e, FramesLost))


def single_copies(n: int, epoch: int = EPOCH, start: int = 0) -> list[bytes]:
    """n frames, repeat 1, no interleave: datagram i is frame i, one message each."""
    return one_frame_per_record(sender(epoch, repeat=1, interleave=1),
                                [msg(i) for i in range(start, start + n)])


@dataclass
class Pump:
    """A minimal driver: time advances in sender ticks, both cores' timers served when due."""

    tx: LinkSender
    rx: LinkReceiver
    channel: Callable[[bytes], list[bytes]] = lambda d: [d]
    now: float = 0.0
    events: list[Event] = field(default_factory=list)

    def _deliver(self, datagrams: list[bytes]) -> None:
        for d in datagrams:
            for survivor in self.channel(d):
                self.events.extend(self.rx.receive(survivor, self.now))

    def step(self, rec: records.Record | None = None, *, heartbeat: bool = False) -> None:
        """One tick: optionally one record as its own frame, then timers."""
        if rec is not None:
            self.tx.push(records.encode(rec), self.now, heartbeat=heartbeat)
            self.tx.flush(self.now)
        deadline = self.tx.next_deadline()
        if deadline is not None and deadline <= self.now:
            self.tx.handle_timer(self.now)
        self._deliver(self.tx.pop_datagrams())
        rx_deadline = self.rx.next_deadline()
        if rx_deadline is not None and rx_deadline <= self.now:
            self.events.extend(self.rx.handle_timer(self.now))
        self.now += self.tx.params.tick

    def finish(self) -> None:
        self._deliver(self.tx.drain(self.now))
        self.now += self.rx.params.reorder_timeout
        self.events.extend(self.rx.handle_timer(self.now))
