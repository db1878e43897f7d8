"""What an RX MQTT sink does with a message until the IT broker has it.

```
MemoryOutbox: submit ─► send now ─────────────────────────────► paho ─► IT broker
                  └─► (away or lagging) bounded queue ─► on reconnect / room, in order
SpoolOutbox:  submit ─► Spool (append) ─► drain ─► PUBLISH QoS 1 ─► IT broker
                             ▲                                          │ PUBACK
                             └──────────── ack (in order) ◄─────────────┘
```

MemoryOutbox: while the broker is away, or connected but lagging (it has not
taken WRITE_BACKLOG bytes), messages wait in a bounded queue (drop-oldest,
counted and logged) and go out in order once it takes them again.

SpoolOutbox: everything is published at QoS 1, since only an acknowledgement
says what may be deleted. While the broker is away the spool fills (bounded
by max_bytes and by what its disk holds; drops counted by the spool, and a
message it cannot keep at all, on a full disk, too); on reconnect everything
not yet acknowledged is sent again, in order, so IT may see a message twice
but never misses one of those that the spool kept. Messages appended in this
run are cached in memory as received, so the drain reads (and decodes) from
disk only after a restart or a long outage; what the spool dropped or
conflated is skipped and forgotten there too, and the spool knows how far the
drain has published (`mark_taken`), so its drop counts are exact.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from paho.mqtt.enums import MQTTErrorCode

from agent.link import records
from agent.mqtt.codec import MqttMessage, encode_message
from agent.spool import Spool, SpoolFull
from agent.spool.reading import ReadCache, forget, skip_dropped

if TYPE_CHECKING:
    from agent.mqtt.sink import MqttSink

log = logging.getLogger("diode.sink.mqtt")



class MemoryOutbox:
    def __init__(self, sink: MqttSink) -> None:
        self.sink = sink
        self._pending: deque[tuple[MqttMessage, float]] = deque()

    def submit(self, msg: MqttMessage, now: float, raw: bytes | None = None) -> None:
        conn = self.sink.conn
        if self._pending or not conn.connected or conn.client.backlogged():
            self._enqueue(msg, now)
            return
        self._send(msg, now)

    def connected(self) -> None:
        self.writable()

    def writable(self) -> None:
        """What waited (broker away or lagging), in order, while the broker takes it."""
        if not self._pending:
            return
        now = time.monotonic()
        conn = self.sink.conn
        while self._pending and conn.connected and not conn.client.backlogged():
            msg, at = self._pending.popleft()
            if not self._send(msg, now, held=now - at):
                break

    def tick(self) -> None:
        pass

    def dropped(self) -> int:
        return 0    # counted by the sink (queue_dropped)

    def stats(self) -> dict[str, Any] | None:
        return None

    def close(self) -> None:
        pass

    def _enqueue(self, msg: MqttMessage, now: float) -> None:
        if len(self._pending) >= self.sink.ch.queue_limit:
            self._pending.popleft()
            self.sink.count_dropped(now)
        self._pending.append((msg, now))

    def _send(self, msg: MqttMessage, now: float, held: float = 0.0) -> bool:
        sink = self.sink
        prepared = sink.prepare(msg, held)
        if prepared is None:
            return True
        topic, props = prepared
        client = sink.conn.client
        if msg.qos == 0 and client.publish_qos0(topic, msg.payload, msg.retain, props):
            sink.counters["published"] += 1
            return True
        info = client.publish(topic, msg.payload, msg.qos, msg.retain, props)
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            if msg.qos:
                sink.awaiting_ack(info.mid, topic)  # published (or refused) on its ack
            else:
                sink.counters["published"] += 1
            return True
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            sink.count_dropped(now)
            return True
        # Not connected after all: keep it for the reconnect.
        self._pending.appendleft((msg, now - held))
        return False


class SpoolOutbox:
    def __init__(self, sink: MqttSink, spool: Spool) -> None:
        self.sink = sink
        self.spool = spool
        self._cache: ReadCache[tuple[MqttMessage, float]] = ReadCache()
        self._cursor = spool.acked_seq
        self._inflight: deque[int] = deque()
        self._done: set[int] = set()
        self._scheduled = False
        spool.on_conflated = self._forget

    def submit(self, msg: MqttMessage, now: float, raw: bytes | None = None) -> None:
        """`raw`: the message's bytes as TX encoded them, stored as they are."""
        # retained topics are state: when the spool is full, keep only their latest
        try:
            seq = self.spool.append(raw if raw is not None else encode_message(msg),
                                    msg.topic if msg.retain else None)
        except SpoolFull:
            return  # its disk is full with nothing left to drop: counted by the spool
        self._cache.keep(seq, (msg, time.time()), len(msg.payload) + len(msg.topic))
        self._kick()

    def connected(self) -> None:
        self._cursor = self.spool.acked_seq  # resend whatever was not acknowledged
        self.spool.mark_taken(self._cursor)
        self._inflight.clear()
        self._done.clear()
        self._kick()

    def dropped(self) -> int:
        c = self.spool.counters
        return c["dropped_oldest"] + c["dropped_conflated"] + c["dropped_full"]

    def writable(self) -> None:
        pass  # the drain is driven by acknowledgements and the tick

    def tick(self) -> None:
        """From the agent's timer: batched fsync, and a nudge for a stalled drain."""
        self.spool.maybe_sync()
        self._kick()

    def stats(self) -> dict[str, Any]:
        return asdict(self.spool.stats())

    def close(self) -> None:
        self.spool.close()

    def _kick(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        conn = self.sink.conn
        if not conn.connected:
            # what was in flight may never be acknowledged: it is resent from the spool
            # on reconnect, so a drop meanwhile loses (and counts) it
            self.spool.mark_taken(self.spool.acked_seq)
            return
        try:
            self._publish(conn.client, conn.receive_maximum - len(self._inflight)
                          - conn.client.inflight())
        finally:
            self.spool.mark_taken(self._cursor)
        self._advance()

    def _publish(self, client: Any, room: int) -> None:
        """Up to `room` messages after the cursor, in order, each PUBLISHed at QoS 1."""
        self._skip_dropped()    # drops happen only inside spool calls: here and after peek
        while room > 0:
            seq = self._cursor + 1
            cached = self._cache.pop(seq, None)
            batch: list[tuple[int, Any, float]]
            if cached is not None:
                batch = [(seq, *cached)]
            else:
                self.spool.mark_taken(self._cursor)  # the read may meet a full disk and drop
                batch = [(r.seq, records.decode(r.payload), r.time)
                         for r in self.spool.peek(min(room, 500), after=self._cursor)]
                if not batch:
                    return
            for seq, msg, appended in batch:
                self._cache.pop(seq, None)
                assert isinstance(msg, MqttMessage)
                prepared = self.sink.prepare(msg, time.time() - appended)
                if prepared is not None:
                    topic, props = prepared
                    if not client.publish_qos1(topic, msg.payload, msg.retain, props,
                                               self._on_ack(seq, topic)):
                        return  # paho's own queue is busy or we are disconnected: next tick
                self._cursor = seq
                self._inflight.append(seq)
                room -= 1
                if prepared is None:
                    self._done.add(seq)
            if cached is None:
                self._skip_dropped()

    def _skip_dropped(self) -> None:
        self._cursor = skip_dropped(self.spool, self._cursor, self._cache)

    def _forget(self, seqs: list[int]) -> None:
        forget(self._cache, seqs)

    def _on_ack(self, seq: int, topic: str) -> Callable[[int], None]:
        return lambda reason: self._acked(seq, reason, topic)

    def _acked(self, seq: int, reason: int, topic: str) -> None:
        if reason >= 0x80:
            self.sink.count_refused(topic, reason)
        else:
            self.sink.counters["published"] += 1
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
