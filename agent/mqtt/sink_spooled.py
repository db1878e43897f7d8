"""RX side with store-and-forward: received messages go into the channel's
encrypted spool, and leave it only once the IT broker acknowledged them.

```
link ─► publish() ─► Spool (append) ─► drain ─► PUBLISH QoS 1 ─► IT broker
                          ▲                                          │ PUBACK
                          └──────────── ack (in order) ◄─────────────┘
```

Everything is published at QoS 1, since only an acknowledgement says what may
be deleted. While the broker is away the spool fills (bounded; drops counted
by the spool); on reconnect everything not yet acknowledged is sent again, in
order, so IT may see a message twice but never misses one. Messages appended
in this run are cached in memory, so the drain reads disk only after a restart
or a long outage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import paho.mqtt.client as paho

from agent.config import RxMqttChannel
from agent.link import records
from agent.link.records import MqttMessage
from agent.mqtt.sink import MqttSink
from agent.spool import Spool

log = logging.getLogger("diode.sink.mqtt")

_CACHE = 50_000


class SpooledMqttSink(MqttSink):
    def __init__(self, ch: RxMqttChannel, on_fatal: Callable[[str], None],
                 spool: Spool) -> None:
        super().__init__(ch, on_fatal)
        self.spool = spool
        self._cache: dict[int, tuple[MqttMessage, float]] = {}
        self._cursor = spool.acked_seq
        self._inflight: deque[int] = deque()
        self._done: set[int] = set()
        self._scheduled = False
        self._refused_logged = 0.0
        self.counters["refused"] = 0

    async def stop(self) -> None:
        await super().stop()
        self.spool.close()

    def publish(self, msg: MqttMessage, now: float) -> None:
        # retained topics are state: when the spool is full, keep only their latest
        seq = self.spool.append(records.encode(msg), msg.topic if msg.retain else None)
        if len(self._cache) < _CACHE:
            self._cache[seq] = (msg, time.time())
        self._kick()

    def tick(self) -> None:
        """From the agent's timer: batched fsync, and a nudge for a stalled drain."""
        self.spool.maybe_sync()
        self._kick()

    def stats(self) -> dict[str, Any]:
        return asdict(self.spool.stats())

    def _on_connected(self, client: paho.Client) -> None:
        self._published.clear()
        self._cursor = self.spool.acked_seq  # resend whatever was not acknowledged
        self._inflight.clear()
        self._done.clear()
        self._kick()

    def _kick(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        if not self.conn.connected:
            return
        client = self.conn.client
        room = self.conn.receive_maximum - len(self._inflight)
        while room > 0:
            seq = self._cursor + 1
            cached = self._cache.pop(seq, None)
            batch: list[tuple[int, Any, float]]
            if cached is not None:
                batch = [(seq, *cached)]
            else:
                batch = [(r.seq, records.decode(r.payload), r.time)
                         for r in self.spool.peek(min(room, 500), after=self._cursor)]
                if not batch:
                    return
            for seq, msg, appended in batch:
                self._cache.pop(seq, None)
                assert isinstance(msg, MqttMessage)
                prepared = self._prepare(msg, time.time() - appended)
                if prepared is not None:
                    topic, props = prepared
                    if not client.publish_qos1(topic, msg.payload, msg.retain, props,
                                               self._on_ack(seq)):
                        return  # paho's own queue is busy or we are disconnected: next tick
                self._cursor = seq
                self._inflight.append(seq)
                room -= 1
                if prepared is None:
                    self._done.add(seq)
        self._advance()

    def _on_ack(self, seq: int) -> Callable[[int], None]:
        return lambda reason: self._acked(seq, reason)

    def _acked(self, seq: int, reason: int) -> None:
        if reason >= 0x80:
            self.counters["refused"] += 1
            now = time.monotonic()
            if now - self._refused_logged > 5:
                self._refused_logged = now
                log.error("%s refused a PUBLISH (reason 0x%02x); %d refused so far. Fix: check "
                          "the broker's ACL for this client", self.conn.what, reason,
                          self.counters["refused"])
        else:
            self.counters["published"] += 1
        self._done.add(seq)
        self._advance()
        self._kick()

    def _advance(self) -> None:
        """Acknowledge to the spool the longest prefix the broker has acknowledged."""
        inflight, done = self._inflight, self._done
        last = 0
        while inflight and inflight[0] in done:
            last = inflight.popleft()
            done.discard(last)
        if last:
            self.spool.ack(last)
