"""RX side: one IT broker connection that republishes a channel's messages.

```
link ─► submit() ─► outbox ─► prepare (topic map, carousel dedupe, expiry) ─► paho ─► IT broker
                    MemoryOutbox: a bounded queue while the broker is away or lagging
                    SpoolOutbox: the encrypted spool, deleted on PUBACK
```

Topics, payloads, QoS and retained flags are kept; MQTT 5 properties are kept
when the IT broker speaks 5, with the expiry aged by the time spent here.
Carousel re-sends of retained state are skipped when this connection already
published the same payload, so IT subscribers do not see a copy every period;
after a reconnect the cache is cleared, so a fresh broker is refilled by the
next carousel. What happens while the broker is away is the outbox's business
(agent/mqtt/outbox.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.properties import Properties

from agent.adapter import LinkView, RxContext, SinkState
from agent.link.records import Record
from agent.mqtt import props as mqtt_props
from agent.mqtt.codec import MqttMessage
from agent.mqtt.config import RxMqttChannel
from agent.mqtt.connection import MqttConnection
from agent.mqtt.outbox import MemoryOutbox, SpoolOutbox

log = logging.getLogger("diode.sink.mqtt")

_OFFLINE = json.dumps({"rx": "offline", "link_state": "UNKNOWN"}).encode()


class MqttSink:
    def __init__(self, ch: RxMqttChannel, ctx: RxContext) -> None:
        self.ch = ch
        self.key = f"mqtt:{ch.name}"
        self._v5 = ch.broker.protocol == "5"
        self._maps_topics = bool(ch.topic_prefix or ch.topic_rewrite)
        self._published: dict[str, bytes] = {}
        self._drop_logged = -1e9
        self.counters = {"published": 0, "queue_dropped": 0, "expired": 0,
                         "carousel_skipped": 0}
        self.conn = MqttConnection(
            ch.broker, f"IT broker '{ch.name}' ({ch.broker.label})",
            on_connected=self._on_connected, on_fatal=ctx.fail,
            on_written=self._on_written,
            will=(ch.status_topic, _OFFLINE) if ch.status_topic else None)
        self.conn.client.max_queued_messages_set(ch.queue_limit)
        spool = ctx.open_spool(ch.name)
        self.outbox: MemoryOutbox | SpoolOutbox = (
            MemoryOutbox(self) if spool is None else SpoolOutbox(self, spool))

    @property
    def state(self) -> SinkState:
        return SinkState(self.conn.state)

    async def start(self) -> None:
        self.conn.start()

    async def stop(self) -> None:
        await self.conn.stop()
        self.outbox.close()

    def submit(self, record: Record, now: float) -> None:
        """Republish one message received from the link at `now` (monotonic)."""
        assert isinstance(record, MqttMessage)  # the registry routes only these here
        self.outbox.submit(record, now)

    def tick(self) -> None:
        self.outbox.tick()

    def dropped(self) -> int:
        return self.counters["queue_dropped"] + self.outbox.dropped()

    def status(self) -> dict[str, Any]:
        return {"state": self.state, **self.counters, **self.conn.counters,
                "spool": self.outbox.stats()}

    async def on_link(self, link: LinkView) -> None:
        if self.ch.status_topic and self.conn.connected:
            self.conn.client.publish(self.ch.status_topic,
                                     json.dumps({**link.status, "channel": self.ch.name}).encode(),
                                     qos=1, retain=True)

    def map_topic(self, topic: str) -> str:
        for old, new in self.ch.topic_rewrite:
            if topic.startswith(old):
                topic = new + topic[len(old):]
                break
        return self.ch.topic_prefix + topic

    def _on_connected(self, client: paho.Client) -> None:
        self._published.clear()
        self.outbox.connected()

    def _on_written(self) -> None:
        self.outbox.writable()

    def prepare(self, msg: MqttMessage, held: float) -> tuple[str, Properties | None] | None:
        """The IT topic and properties, or None when the message is not to be published
        (a carousel copy this connection already published, or expired; both counted)."""
        topic = self.map_topic(msg.topic) if self._maps_topics else msg.topic
        if not _publishable(topic):
            self._bad_topic(msg.topic, topic)
            return None
        if msg.retain:
            digest = hashlib.blake2b(msg.payload, digest_size=16).digest()
            if msg.carousel and self._published.get(topic) == digest:
                self.counters["carousel_skipped"] += 1
                return None
            if msg.payload:
                self._published[topic] = digest
            else:
                self._published.pop(topic, None)
        props = None
        if self._v5 and msg.properties:
            aged = mqtt_props.age(msg.properties, held)
            if mqtt_props.expired(aged):
                self.counters["expired"] += 1
                return None
            props = mqtt_props.to_paho(aged)
        return topic, props

    def _bad_topic(self, source_topic: str, topic: str) -> None:
        """A topic no broker takes (a wildcard, empty, or too long), made by topic_prefix or
        topic_rewrite from one that was fine on OT: counted, logged, never retried."""
        n = self.counters["bad_topic"] = self.counters.get("bad_topic", 0) + 1
        if n in (1, 100) or n % 10000 == 0:
            log.error("channel '%s': topic %r (from %r on OT) cannot be published (%d so far): "
                      "it is empty, too long or holds + or #. Fix: check topic_prefix and "
                      "topic_rewrite", self.ch.name, topic[:200], source_topic[:200], n)

    def count_dropped(self, now: float) -> None:
        """A message this channel could not keep: counted, and logged at most every 5 s."""
        self.counters["queue_dropped"] += 1
        if now - self._drop_logged > 5:
            self._drop_logged = now
            log.error("%s is %s and %d messages wait (queue_limit): dropping messages "
                      "(%d so far). Fix: check the broker's load and the network to it, or "
                      "raise queue_limit to ride out longer stalls", self.conn.what,
                      "lagging" if self.conn.connected else "away", self.ch.queue_limit,
                      self.counters["queue_dropped"])


def _publishable(topic: str) -> bool:
    return bool(topic) and "+" not in topic and "#" not in topic \
        and len(topic.encode()) <= 65535
