"""TX side: one OT broker connection subscribed to a channel's topic filters.

paho delivers messages in the agent's loop; they wait in TX's queue (memory
or the encrypted spool, see tx_queue.py) until the pump frames them, so a link
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
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.config import TxMqttChannel
from agent.link.records import MqttMessage, encode_mqtt
from agent.mqtt import props as mqtt_props
from agent.mqtt.connection import MqttConnection
from agent.queues import Entry, MemoryQueue, SpoolQueue

log = logging.getLogger("diode.source.mqtt")

class MqttSource:
    def __init__(self, ch: TxMqttChannel, queue: MemoryQueue | SpoolQueue,
                 wake: Callable[[], None], on_fatal: Callable[[str], None]) -> None:
        self.ch = ch
        self.queue = queue
        self._wake = wake
        self._v5 = ch.broker.protocol == "5"
        # What the link has been given: topic -> (payload, qos, properties).
        self.retained: dict[str, tuple[bytes, int, dict[str, Any] | None]] = {}
        self._retained_topics: set[str] = set()  # as seen on arrival (3.1.1 guess)
        self.counters = {"received": 0, "queue_dropped": 0, "expired": 0}
        self._drop_logged = 0.0
        self.conn = MqttConnection(
            ch.broker, f"OT broker '{ch.name}' ({ch.broker.label})",
            on_connected=self._subscribe, on_message=self._on_message, on_fatal=on_fatal,
            manual_ack=queue.manual_ack, session_expiry=ch.session_expiry)

    @property
    def state(self) -> str:
        return self.conn.state

    def start(self) -> None:
        self.conn.start()

    async def stop(self) -> None:
        await self.conn.stop()

    def _subscribe(self, client: paho.Client) -> None:
        if self._v5:
            client.subscribe([(t, SubscribeOptions(qos=self.ch.qos, retainAsPublished=True))
                              for t in self.ch.topics])
        else:
            client.subscribe([(t, self.ch.qos) for t in self.ch.topics])

    def _on_message(self, topic: str, payload: bytes, qos: int, retain: bool,
                    properties: Properties | None, mid: int) -> None:
        self.counters["received"] += 1
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
        if not self.queue.put((self.ch.name, topic, payload, qos, retain, props, time.time()),
                              ack):
            self.counters["queue_dropped"] += 1
            now = time.monotonic()
            if now - self._drop_logged > 5:
                self._drop_logged = now
                log.error("channel '%s': queue full (%d); dropping messages (%d so far). The "
                          "link is slower than the OT traffic: raise [link] bitrate, narrow "
                          "topics, or give TX a [spool]", self.ch.name, self.ch.queue_limit,
                          self.counters["queue_dropped"])
            return
        self._wake()

    def taken(self, entry: Entry, now: float) -> bytes | None:
        """The encoded record for an entry the pump took (None: expired while queued),
        with the expiry aged by the wait. Updates the retained copy the carousel re-sends."""
        _, topic, payload, qos, retain, props, arrived = entry
        if props is not None and "expiry" in props:
            props = mqtt_props.age(props, now - arrived)
            if mqtt_props.expired(props):
                self.counters["expired"] += 1
                if retain:  # the broker has dropped it too
                    self.retained.pop(topic, None)
                return None
        if retain:
            if payload:
                self.retained[topic] = (payload, qos, props)
            else:
                self.retained.pop(topic, None)
        return encode_mqtt(self.ch.name, topic, payload, qos, retain, props)

    def carousel(self) -> Iterator[MqttMessage]:
        """Re-sends of the retained state, each read when the caller takes it: the
        carousel paces itself across many loop turns, and a topic updated
        meanwhile must go out with its new value, never the old one."""
        for topic in list(self.retained):
            item = self.retained.get(topic)
            if item is not None:
                payload, qos, props = item
                yield MqttMessage(self.ch.name, topic, payload, qos, True, props, carousel=True)
