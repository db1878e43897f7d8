"""RX side: one IT broker connection that republishes a channel's messages.

Topics, payloads, QoS and retained flags are kept; MQTT 5 properties are kept
when the IT broker speaks 5, with the expiry aged by the time spent here.
While the broker is away, or connected but lagging (it has not taken
WRITE_BACKLOG bytes), messages wait in a bounded queue (overflow counted and
logged) and go out in order once it takes them again. Carousel re-sends of
retained state are skipped when this connection already published the same
payload, so IT subscribers do not see a copy every period; after a reconnect
the cache is cleared, so a fresh broker is refilled by the next carousel.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties

from agent.config import RxMqttChannel
from agent.link.records import MqttMessage
from agent.mqtt import props as mqtt_props
from agent.mqtt.connection import MqttConnection

log = logging.getLogger("diode.sink.mqtt")

_OFFLINE = json.dumps({"rx": "offline", "link_state": "UNKNOWN"}).encode()


class MqttSink:
    def __init__(self, ch: RxMqttChannel, on_fatal: Callable[[str], None]) -> None:
        self.ch = ch
        self._v5 = ch.broker.protocol == "5"
        self._maps_topics = bool(ch.topic_prefix or ch.topic_rewrite)
        self._drop_logged = -1e9
        self._pending: deque[tuple[MqttMessage, float]] = deque()
        self._published: dict[str, bytes] = {}
        self.counters = {"published": 0, "queue_dropped": 0, "expired": 0,
                         "carousel_skipped": 0}
        self.conn = MqttConnection(
            ch.broker, f"IT broker '{ch.name}' ({ch.broker.label})",
            on_connected=self._on_connected, on_fatal=on_fatal,
            on_written=self._send_pending,
            will=(ch.status_topic, _OFFLINE) if ch.status_topic else None)
        self.conn.client.max_queued_messages_set(ch.queue_limit)

    @property
    def state(self) -> str:
        return self.conn.state

    def start(self) -> None:
        self.conn.start()

    async def stop(self) -> None:
        await self.conn.stop()

    def tick(self) -> None:
        """From the agent's timer; the in-memory sink has nothing to do."""

    def stats(self) -> dict[str, Any] | None:
        """The spool's state, for the status file; None without one."""
        return None

    def map_topic(self, topic: str) -> str:
        for old, new in self.ch.topic_rewrite:
            if topic.startswith(old):
                topic = new + topic[len(old):]
                break
        return self.ch.topic_prefix + topic

    def publish(self, msg: MqttMessage, now: float) -> None:
        """Republish one message received from the link at `now` (monotonic)."""
        if self._pending or not self.conn.connected or self.conn.client.backlogged():
            self._enqueue(msg, now)
            return
        self._send(msg, now)

    def publish_status(self, status: dict[str, Any]) -> None:
        if self.ch.status_topic and self.conn.connected:
            self.conn.client.publish(self.ch.status_topic, json.dumps(status).encode(), qos=1,
                                     retain=True)

    def _enqueue(self, msg: MqttMessage, now: float) -> None:
        if len(self._pending) >= self.ch.queue_limit:
            self._pending.popleft()
            self._dropped(now)
        self._pending.append((msg, now))

    def _dropped(self, now: float) -> None:
        n = self.counters["queue_dropped"] = self.counters["queue_dropped"] + 1
        if now - self._drop_logged > 5:
            self._drop_logged = now
            log.error("%s is %s and %d messages wait (queue_limit): dropping messages "
                      "(%d so far). Fix: check the broker's load and the network to it, or "
                      "raise queue_limit to ride out longer stalls", self.conn.what,
                      "lagging" if self.conn.connected else "away", self.ch.queue_limit, n)

    def _on_connected(self, client: paho.Client) -> None:
        self._published.clear()
        self._send_pending()

    def _send_pending(self) -> None:
        """What waited (broker away or lagging), in order, while the broker takes it."""
        if not self._pending:
            return
        now = time.monotonic()
        client = self.conn.client
        while self._pending and self.conn.connected and not client.backlogged():
            msg, at = self._pending.popleft()
            if not self._send(msg, now, held=now - at):
                break

    def _prepare(self, msg: MqttMessage, held: float) -> tuple[str, Properties | None] | None:
        """The IT topic and properties, or None when the message is not to be published
        (a carousel copy this connection already published, or expired; both counted)."""
        topic = self.map_topic(msg.topic) if self._maps_topics else msg.topic
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

    def _send(self, msg: MqttMessage, now: float, held: float = 0.0) -> bool:
        prepared = self._prepare(msg, held)
        if prepared is None:
            return True
        topic, props = prepared
        client = self.conn.client
        if msg.qos == 0 and client.publish_qos0(topic, msg.payload, msg.retain, props):
            self.counters["published"] += 1
            return True
        info = client.publish(topic, msg.payload, msg.qos, msg.retain, props)
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.counters["published"] += 1
            return True
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            self._dropped(now)
            return True
        # Not connected after all: keep it for the reconnect.
        self._pending.appendleft((msg, now - held))
        return False
