"""The RX side's routing, without I/O: datagrams in, records to sinks. `now` comes in.

```
datagram ─► LinkReceiver ─► RecordReceived ─► registry (record class ─► protocol, channel) ─► Sink.submit
                           │                  Heartbeat ─► LinkHealth (datagram loss from TX's counts),
                           │                               receiver (the recovery window's oldest frame)
                           │                  TxLog ─► RX's log ("TX: ...") and the last few kept
                           ├► FramesLost ─────────────────► LinkHealth, a rate-limited log line
                           └► EpochChanged ───────────────► LinkHealth, a log line
```

A record for a channel this RX does not have is counted as `unrouted` and
logged once per channel with the fix.

While RX waits for frames it missed (agent/link/missed.py), it notes for each
record key (an MQTT topic: `Adapter.order_key`) the newest frame delivered, so
that a late record behind a newer one reaches its sink as SUPERSEDED, never as
if it were the latest state. Once nothing is missed any more, the notes go.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from agent.adapter import Arrival, Sink
from agent.link import records
from agent.link.events import EpochChanged, Event, FramesLost, RecordReceived
from agent.link.health import LinkHealth
from agent.link.receiver import LinkReceiver
from agent.protocols import BY_RECORD
from agent.txlog import TxLog

log = logging.getLogger("diode.rx")
tx_log = logging.getLogger("diode.tx-log")
TX_LOG_KEPT = 20


class RxCore:
    def __init__(self, receiver: LinkReceiver, health: LinkHealth,
                 sinks: Mapping[tuple[str, str], Sink], config_path: object = "rx.toml") -> None:
        self.receiver = receiver
        self.health = health
        self.sinks = sinks           # (protocol, channel) -> sink
        self.config_path = config_path
        self.counters = {"unrouted": 0, "tx_log": 0}
        self.tx_log: deque[dict[str, Any]] = deque(maxlen=TX_LOG_KEPT)  # TX's latest warnings
        self._epoch_datagrams = 0
        self._unrouted_logged: set[tuple[str, str]] = set()
        self._lost_unlogged = 0
        self._lost_logged_at = -1.0
        # record key -> newest seq delivered, while frames RX missed may still come
        self._newest: dict[object, int] | None = None
        self.counters["superseded"] = 0

    def datagram(self, datagram: bytes, now: float) -> None:
        self.handle(self.receiver.receive(datagram, now), now)

    def timer(self, now: float) -> None:
        """The receiver's reorder deadline, when due."""
        deadline = self.receiver.next_deadline()
        if deadline is not None and deadline <= now:
            self.handle(self.receiver.handle_timer(now), now)

    def handle(self, events: list[Event], now: float) -> None:
        self._handle(events, now)
        if self._newest is not None and not self.receiver.missing:
            self._newest = None   # nothing missed any more: nothing can come late

    def _handle(self, events: list[Event], now: float) -> None:
        sinks = self.sinks
        for ev in events:
            if isinstance(ev, RecordReceived):
                rec = ev.record
                adapter = BY_RECORD.get(rec.__class__)
                if adapter is not None:
                    channel = adapter.channel_of(rec) or ""
                    sink = sinks.get((adapter.name, channel))
                    if sink is None:
                        self._unrouted(adapter.name, channel)
                    elif self._newest is None and not ev.recovered:
                        sink.submit(rec, now, Arrival.LIVE, ev.raw)
                    else:
                        # a late record entered the link `age` s before this copy: its
                        # sink ages it (an MQTT expiry) from then
                        sink.submit(rec, now - ev.age, self._arrival(adapter.order_key, ev),
                                    ev.raw)
                elif rec.__class__ is TxLog:
                    self._tx_log(rec, now)
                elif isinstance(rec, records.Heartbeat):
                    c = self.receiver.counters
                    self.health.on_heartbeat(rec, c["valid"] + c["duplicates"]
                                             - self._epoch_datagrams, now, ev.seq,
                                             self.receiver.heartbeat_copies)
                    self.handle(self.receiver.heartbeat(rec), now)
            elif isinstance(ev, FramesLost) and ev.while_away:
                log.warning("link: %d frame(s) sent before RX joined the stream (from seq %d "
                            "of epoch %016x) are lost: TX's recovery window no longer had "
                            "them (missed: %d in all). Fix: a longer [link] recovery_window "
                            "on TX, if RX outages this long are expected", ev.count,
                            ev.first_seq, ev.epoch, self.receiver.counters["missed"])
            elif isinstance(ev, FramesLost):
                self.health.on_lost(now)
                self._lost_unlogged += ev.count
                if now - self._lost_logged_at >= 1.0:
                    log.warning("link: %d frame(s) lost since the last report (epoch %016x, "
                                "latest from seq %d); %d lost in all", self._lost_unlogged,
                                ev.epoch, ev.first_seq, self.receiver.counters["lost"])
                    self._lost_unlogged, self._lost_logged_at = 0, now
            elif isinstance(ev, EpochChanged):
                c = self.receiver.counters
                self._epoch_datagrams = c["valid"] + c["duplicates"] - 1
                self.health.on_epoch()
                self._newest = {} if self.receiver.missing else None
                if ev.old is None:
                    log.info("link: receiving epoch %016x", ev.new)
                else:
                    log.warning("link: TX restarted (epoch %016x -> %016x); following it",
                                ev.old, ev.new)

    def _arrival(self, order_key: Callable[[records.Record], Hashable | None] | None,
                 ev: RecordReceived) -> Arrival:
        """LIVE, RECOVERED, SUPERSEDED or UNPLACED, noting the newest seq of the record's
        key."""
        newest = self._newest if self._newest is not None else {}
        late = Arrival.UNPLACED if ev.unplaced else Arrival.RECOVERED
        key = None if order_key is None else order_key(ev.record)
        if key is None:
            return late if ev.recovered else Arrival.LIVE
        if newest.get(key, -1) > ev.seq:
            self.counters["superseded"] += 1
            return Arrival.SUPERSEDED
        newest[key] = ev.seq
        return late if ev.recovered else Arrival.LIVE

    def _tx_log(self, rec: TxLog, now: float) -> None:
        """One of TX's own warnings or errors: into RX's log, prefixed, and the status."""
        self.counters["tx_log"] += 1
        more = f" ({rec.suppressed} more suppressed before this)" if rec.suppressed else ""
        level = rec.level if rec.level >= logging.WARNING else logging.WARNING
        tx_log.log(level, "TX: %s: %s%s", rec.logger, rec.message, more)
        self.tx_log.append({"time": rec.time, "level": logging.getLevelName(rec.level),
                            "logger": rec.logger, "message": rec.message,
                            "suppressed": rec.suppressed})

    def _unrouted(self, protocol: str, channel: str) -> None:
        self.counters["unrouted"] += 1
        if (protocol, channel) not in self._unrouted_logged:
            self._unrouted_logged.add((protocol, channel))
            log.error("link: records for %s channel '%s' have no [[%s]] channel of that name "
                      "here; they are dropped and counted. Fix: add [[%s]] name = \"%s\" to %s",
                      protocol, channel, protocol, protocol, channel, self.config_path)
