"""Small helpers for the link tests: TX runs in memory, one record per frame.

Data records are MQTT messages, built in `message` only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from agent.link import records, wire
from agent.link.events import Event, RecordReceived
from agent.link.receiver import LinkReceiver, ReceiverParams
from agent.link.recovery import RecoveryParams, RecoveryWindow
from agent.link.sender import LinkSender, SenderParams
from agent.mqtt.codec import MqttMessage

KEY = bytes(range(32))
LINK_ID = 7
T0 = 1_700_000_000.0  # "now" on a board with a sane clock, unix seconds


def epoch_at(unix_s: float, rand: int = 0x2A) -> int:
    """The epoch a TX starting at `unix_s` by its own clock picks (agent/tx.py)."""
    return (int(unix_s * 1000) & (1 << 42) - 1) << 22 | rand


def message(tag: str, i: int) -> MqttMessage:
    return MqttMessage("ch", f"{tag}/{i}", i.to_bytes(4, "big") * 4, qos=1)


class Tx:
    """A TX run: `frame` seals one record as its own frame and returns all its copies."""

    def __init__(self, epoch: int, *, repeat: int = 1, key: bytes = KEY,
                 recovery: bool = False) -> None:
        self.epoch = epoch
        self.repeat = repeat
        # a window that keeps everything, each frame due at once
        self.window = RecoveryWindow(RecoveryParams(3600.0, 1 << 30, 0.0, 0.0)) \
            if recovery else None
        self.sender = LinkSender(SenderParams(link_id=LINK_ID, repeat=repeat, interleave=1),
                                 key, epoch, self.window)
        self._resent: dict[int, bytes] = {}

    def resent(self, seqs: Iterable[int], now: float = 0.0) -> list[bytes]:
        """The recovery window's copies of frames `seqs` (sealed by `now`)."""
        assert self.window is not None
        for d in self.sender.resend(now, 1 << 40):
            self._resent[wire.parse_header(d).seq] = d
        return [self._resent[s] for s in seqs]

    def frame(self, rec: records.Record, now: float = 0.0) -> list[bytes]:
        self.sender.push(records.encode(rec), now)
        return self.sender.drain(now)

    def heartbeat(self, now: float = 0.0, repeat: int | None = None) -> list[bytes]:
        hb = records.Heartbeat(now, 1.0, self.repeat if repeat is None else repeat,
                               {"datagrams": self.sender.counters["datagrams"]}, {})
        self.sender.push_heartbeat(lambda: records.encode(hb), now)
        return self.sender.drain(now)

    def frames(self, tag: str, indices: Iterable[int], now: float = 0.0) -> list[bytes]:
        return [d for i in indices for d in self.frame(message(tag, i), now)]


def receiver(memory: Any = None, **params: Any) -> LinkReceiver:
    return LinkReceiver(ReceiverParams(link_id=LINK_ID, **params), KEY, memory)


def feed(rx: LinkReceiver, datagrams: Iterable[bytes], now: float = 0.0) -> list[Event]:
    events: list[Event] = []
    for d in datagrams:
        events.extend(rx.receive(d, now))
    return events


def topics(events: Iterable[Event]) -> list[str]:
    return [e.record.topic for e in events
            if isinstance(e, RecordReceived) and isinstance(e.record, MqttMessage)]


def forged(epoch: int, seq: int, size: int = 100, flags: int = 0) -> bytes:
    """A datagram with a well-formed header and a body no key sealed."""
    return wire.Header(wire.VERSION, flags, LINK_ID, epoch, seq).pack() + os.urandom(size)


OUTCOMES = ("valid", "duplicates", "late", "truncated", "bad_version", "bad_flags",
            "wrong_link", "unverified", "auth_failed", "replayed", "stale_epoch",
            "resent_used", "resent_skipped")


def outcomes(rx: LinkReceiver) -> int:
    """Each datagram ends in exactly one of these counters."""
    return sum(rx.counters[k] for k in OUTCOMES)
