"""TX side: one OT broker connection subscribed to a channel's topic filters.

paho delivers messages in the agent's loop; they wait in TX's queue (memory
or the channel's encrypted spool, see agent/queues.py) until the pump frames them, so a link
slower than the plant backs up there. With the spool, QoS 1/2 messages are
acknowledged to the broker only once durable, and a lasting session makes the
broker keep unacknowledged ones while TX is away.

The last retained message of every topic is kept for the carousel, which
re-sends them so RX converges without asking. That copy is updated only when
the pump takes a message for the link, and the carousel reads it at the moment
it sends, so a carousel copy never overtakes a live message still queued here
(RX would publish an old value after a newer one, or the newer one twice).

With MQTT 5 the subscription uses retainAsPublished, so the retain flag is
exact. A 3.1.1 broker clears the flag on live messages, so a topic already
known to be retained is taken to stay retained.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

import cbor2
import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.adapter import Carousel, SourceState, TxContext
from agent.mqtt import props as mqtt_props
from agent.mqtt.codec import encode_mqtt
from agent.mqtt.config import TxMqttChannel
from agent.mqtt.connection import MqttConnection
from agent.queues import MemoryQueue, SpoolQueue

log = logging.getLogger("diode.source.mqtt")

# topic, payload, qos, retain, properties, arrival (wall clock)
Entry = tuple[str, bytes, int, bool, dict[str, Any] | None, float]


def _encode_entry(e: Entry) -> bytes:
    return cbor2.dumps(list(e))


def _decode_entry(data: bytes) -> Entry:
    topic, payload, qos, retain, props, arrived = cbor2.loads(data)
    return topic, payload, qos, retain, props, arrived


class MqttSource:
    def __init__(self, ch: TxMqttChannel, ctx: TxContext) -> None:
        self.ch = ch
        self.key = f"mqtt:{ch.name}"
        self._wake = ctx.wake
        self._v5 = ch.broker.protocol == "5"
        spool = ctx.open_spool(ch.name)
        self.queue: MemoryQueue[Entry] | SpoolQueue[Entry]
        if spool is None:
            self.queue = MemoryQueue(ch.queue_limit)
        else:
            conflating = ch.overflow == "conflate"
            # retained topics are state: when the spool is full, keep only their latest
            self.queue = SpoolQueue(spool, _encode_entry, _decode_entry,
                                    lambda e: e[0] if e[3] or conflating else None)
        # What the link has been given: topic -> (payload, qos, properties).
        self.retained: dict[str, tuple[bytes, int, dict[str, Any] | None]] = {}
        self._retained_topics: set[str] = set()  # as seen on arrival (3.1.1 guess)
        self._counters = {"received": 0, "queue_dropped": 0, "expired": 0}
        self._drop_logged = 0.0
        self.carousels = (Carousel("retained", ch.carousel_period, ch.carousel_share,
                                   self._carousel_round),)
        self.conn = MqttConnection(
            ch.broker, f"OT broker '{ch.name}' ({ch.broker.label})",
            on_connected=self._subscribe, on_message=self._on_message, on_fatal=ctx.fail,
            manual_ack=self.queue.manual_ack, session_expiry=ch.session_expiry)

    @property
    def state(self) -> SourceState:
        return SourceState(self.conn.state)

    async def start(self) -> None:
        self.conn.start()

    async def stop(self) -> None:
        await self.conn.stop()

    def waiting(self) -> int:
        return len(self.queue)

    def dropped(self) -> int:
        return self._counters["queue_dropped"] + self.queue.dropped()

    @property
    def counters(self) -> Mapping[str, int]:
        return {**self._counters, **self.conn.counters}

    def stats(self) -> dict[str, Any]:
        return self.queue.stats()

    def tick(self) -> None:
        self.queue.tick()

    def framed(self, tags: list[object]) -> None:
        self.queue.framed(tags)

    def rewind(self) -> None:
        self.queue.rewind()

    def close(self) -> None:
        self.queue.close()

    def _subscribe(self, client: paho.Client) -> None:
        if self._v5:
            client.subscribe([(t, SubscribeOptions(qos=self.ch.qos, retainAsPublished=True))
                              for t in self.ch.topics])
        else:
            client.subscribe([(t, self.ch.qos) for t in self.ch.topics])

    def _on_message(self, topic: str, payload: bytes, qos: int, retain: bool,
                    properties: Properties | None, mid: int) -> None:
        self._counters["received"] += 1
        props = None if properties is None else mqtt_props.from_paho(properties)
        retain = retain or (not self._v5 and topic in self._retained_topics)
        if retain and not self._v5:
            if payload:
                self._retained_topics.add(topic)
            else:
                self._retained_topics.discard(topic)
        ack = None
        if qos and self.queue.manual_ack:
            client = self.conn.client
            ack = lambda: client.ack(mid, qos)  # noqa: E731 (a closure is the point)
        if not self.queue.put((topic, payload, qos, retain, props, time.time()), ack):
            self._counters["queue_dropped"] += 1
            now = time.monotonic()
            if now - self._drop_logged > 5:
                self._drop_logged = now
                log.error("channel '%s': queue full (%d); dropping messages (%d so far). The "
                          "link is slower than the OT traffic: raise [link] bitrate, narrow "
                          "topics, or give TX a [spool]", self.ch.name, self.ch.queue_limit,
                          self._counters["queue_dropped"])
            return
        self._wake()

    def take(self, wall: float, limit: int) -> list[tuple[bytes | None, object]]:
        """Encoded records with the expiry aged by the wait (None: expired while queued).
        Updates the retained copy the carousel re-sends."""
        out: list[tuple[bytes | None, object]] = []
        name, retained = self.ch.name, self.retained
        for tag, (topic, payload, qos, retain, props, arrived) in self.queue.take(limit):
            if props is not None and "expiry" in props:
                props = mqtt_props.age(props, wall - arrived)
                if mqtt_props.expired(props):
                    self._counters["expired"] += 1
                    if retain:  # the broker has dropped it too
                        retained.pop(topic, None)
                    out.append((None, tag))
                    continue
            if retain:
                if payload:
                    retained[topic] = (payload, qos, props)
                else:
                    retained.pop(topic, None)
            out.append((encode_mqtt(name, topic, payload, qos, retain, props), tag))
        return out

    def _carousel_round(self) -> Iterator[bytes]:
        """Re-sends of the retained state, each read when the scheduler takes it: a
        round spans many loop turns, and a topic updated meanwhile must go out with
        its new value, never the old one."""
        name = self.ch.name
        for topic in list(self.retained):
            item = self.retained.get(topic)
            if item is not None:
                payload, qos, props = item
                yield encode_mqtt(name, topic, payload, qos, True, props, carousel=True)
