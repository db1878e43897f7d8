"""RX side: one IT broker connection that republishes a channel's messages.

```
link ─► submit() ─► outbox ─► prepare (topic map, carousel dedupe, expiry) ─► paho ─► IT broker
                    MemoryOutbox: a bounded queue while the broker is away or lagging
                    SpoolOutbox: the encrypted spool, deleted on PUBACK
```

Topics, payloads, QoS and retained flags are kept; MQTT 5 properties are kept
when the IT broker speaks 5, with the expiry aged by the time spent here; a
message with no expiry left is dropped and counted (`expired`), whatever the
IT broker speaks. Carousel re-sends of retained state, deletions included, are
skipped when this connection already published the same payload, so IT
subscribers do not see a copy every period; after a reconnect the cache is
cleared, so a fresh broker is refilled by the next carousel. What happens
while the broker is away is the outbox's business (agent/mqtt/outbox.py).

What the IT broker cannot take is counted and logged with its topic, never
sent: a payload above `max_message_size` (`too_large`), a PUBLISH above the
Maximum Packet Size of its CONNACK (`too_large_for_broker`: sending it would
get RX disconnected, and with a spool resent at every reconnect). A PUBLISH it
refuses (v5 reason code, e.g. its ACL) is counted as `refused`, not published.

A message RX got late from TX's recovery window has its expiry aged by the time
it waited there (and is dropped as `expired` when none is left, as any other).
A message RX got late from TX's recovery window after a newer one of its topic
(SUPERSEDED, agent/adapter.py) must not overwrite the newer state: it goes out
unretained, marked with the user property `diode-late: superseded` (MQTT 5;
3.1.1 has no properties), counted `late`; a late carousel copy of retained
state is dropped (`carousel_skipped`). So does a message a new RX board got
from before it ran (UNPLACED: the broker may hold newer from the board before;
marked `diode-late: unplaced`). A late message that nothing overtook goes out
as it came: the topic's order holds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.adapter import Arrival, LinkView, RxContext, SinkState
from agent.link.records import Record
from agent.mqtt import props as mqtt_props
from agent.mqtt.codec import MqttMessage
from agent.mqtt.config import RxMqttChannel
from agent.mqtt.connection import MqttConnection, _varint
from agent.mqtt.outbox import MemoryOutbox, SpoolOutbox

log = logging.getLogger("diode.sink.mqtt")

_OFFLINE = json.dumps({"rx": "offline", "link_state": "UNKNOWN"}).encode()
_EMPTY = hashlib.blake2b(b"", digest_size=16).digest()
_LOGGED_TOPICS = 1000  # topics logged one by one per reason; beyond, only counted


class MqttSink:
    def __init__(self, ch: RxMqttChannel, ctx: RxContext) -> None:
        self.ch = ch
        self.key = f"mqtt:{ch.name}"
        self._v5 = ch.broker.protocol == "5"
        self._maps_topics = bool(ch.topic_prefix or ch.topic_rewrite)
        self._published: dict[str, bytes] = {}
        self._drop_logged = -1e9
        self.counters = {"published": 0, "queue_dropped": 0, "expired": 0,
                         "carousel_skipped": 0, "too_large": 0, "too_large_for_broker": 0,
                         "refused": 0, "late": 0}
        self._logged: dict[str, set[str]] = {}
        self._refused_logged = -1e9
        self.conn = MqttConnection(
            ch.broker, f"IT broker '{ch.name}' ({ch.broker.label})",
            on_connected=self._on_connected, on_fatal=ctx.fail,
            on_written=self._on_written,
            will=(ch.status_topic, _OFFLINE) if ch.status_topic else None)
        self.conn.client.max_queued_messages_set(ch.queue_limit)
        self.conn.client.on_publish = self._on_publish
        self._awaiting: dict[int, str] = {}  # packet id -> topic, QoS 1/2 through paho
        spool = ctx.open_spool(ch.name, largest_record=ch.largest_record)
        self.outbox: MemoryOutbox | SpoolOutbox = (
            MemoryOutbox(self) if spool is None else SpoolOutbox(self, spool))
        if spool is not None:
            ctx.keep_raw()

    @property
    def state(self) -> SinkState:
        return SinkState(self.conn.state)

    async def start(self) -> None:
        self.conn.start()

    async def stop(self) -> None:
        await self.conn.stop()
        self.outbox.close()

    def submit(self, record: Record, now: float, arrival: Arrival = Arrival.LIVE,
               raw: bytes | None = None) -> None:
        """Republish one message received from the link at `now` (monotonic); `raw`, its
        bytes as TX encoded them, is what a spool stores while the message is unchanged."""
        assert isinstance(record, MqttMessage)  # the registry routes only these here
        if arrival is not Arrival.LIVE and record.properties:
            # its expiry counts the time it waited in TX's recovery window too
            record = record._replace(properties=mqtt_props.age(
                record.properties, max(0.0, time.monotonic() - now)))
            raw = None
        if arrival is Arrival.SUPERSEDED or arrival is Arrival.UNPLACED:
            if record.carousel:
                self.counters["carousel_skipped"] += 1
                return
            self.counters["late"] += 1
            record, raw = superseded(record, arrival.value), None
        if len(record.payload) > self.ch.max_message_size:
            self.counters["too_large"] += 1
            self._log_topic("too_large", record.topic,
                            "%s: message on '%s' of %d bytes is larger than max_message_size "
                            "(%d); it is not published (too_large: %d so far). Fix: set "
                            "max_message_size alike on TX and RX", self.conn.what,
                            record.topic, len(record.payload), self.ch.max_message_size,
                            self.counters["too_large"])
            return
        try:
            self.outbox.submit(record, now, raw)
        except ValueError:  # the spool cannot hold it: never lose the rest of a frame
            self.counters["too_large"] += 1
            self._log_topic("too_large", record.topic, "%s: message on '%s' (%d bytes with its "
                            "topic and properties) is larger than a spool segment; it is not "
                            "published. Fix: set max_message_size alike on TX and RX",
                            self.conn.what, record.topic, len(record.payload))

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
        (a carousel copy this connection already published, expired, or larger than the
        broker takes; each counted)."""
        topic = self.map_topic(msg.topic) if self._maps_topics else msg.topic
        if not _publishable(topic):
            self._bad_topic(msg.topic, topic)
            return None
        props = None
        if msg.properties:
            aged = mqtt_props.age(msg.properties, held)
            if mqtt_props.expired(aged):
                self.counters["expired"] += 1
                return None
            if self._v5:
                props = mqtt_props.to_paho(aged)
        limit = self.conn.max_packet_size
        if limit and (props is not None or len(msg.payload) + 4 * len(topic) + 16 > limit) \
                and self._packet_size(topic, msg, props) > limit:
            self.counters["too_large_for_broker"] += 1
            self._log_topic("too_large_for_broker", topic,
                            "%s: message on '%s' of %d bytes does not fit the broker's maximum "
                            "packet size (%d bytes, from its CONNACK); it is not published "
                            "(too_large_for_broker: %d so far). Fix: raise the IT broker's "
                            "max_packet_size, or lower max_message_size on TX",
                            self.conn.what, topic, len(msg.payload), limit,
                            self.counters["too_large_for_broker"])
            return None
        if msg.retain:
            digest = hashlib.blake2b(msg.payload, digest_size=16).digest() if msg.payload \
                else _EMPTY
            if msg.carousel and self._published.get(topic) == digest:
                self.counters["carousel_skipped"] += 1
                return None
            self._published[topic] = digest  # deletions too: a tombstone is sent once
        return topic, props

    def _bad_topic(self, source_topic: str, topic: str) -> None:
        """A topic no broker takes (a wildcard, empty, or too long), made by topic_prefix or
        topic_rewrite from one that was fine on OT: counted, logged, never retried."""
        n = self.counters["bad_topic"] = self.counters.get("bad_topic", 0) + 1
        if n in (1, 100) or n % 10000 == 0:
            log.error("channel '%s': topic %r (from %r on OT) cannot be published (%d so far): "
                      "it is empty, too long or holds + or #. Fix: check topic_prefix and "
                      "topic_rewrite", self.ch.name, topic[:200], source_topic[:200], n)

    def _packet_size(self, topic: str, msg: MqttMessage, props: Properties | None) -> int:
        """Bytes of the PUBLISH packet for `msg`: fixed header, topic, packet id,
        properties (v5), payload."""
        n = 2 + len(topic.encode()) + (2 if msg.qos else 0) + len(msg.payload)
        if self._v5:
            n += 1 if props is None else len(props.pack())
        return 1 + len(_varint(n)) + n

    def awaiting_ack(self, mid: int, topic: str) -> None:
        """A QoS 1/2 PUBLISH handed to paho: counted when the broker answers it."""
        if len(self._awaiting) > 4 * self.ch.queue_limit:  # acks lost with a session
            self._awaiting.clear()
        self._awaiting[mid] = topic

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode,
                    properties: Any) -> None:
        topic = self._awaiting.pop(mid, None)
        if topic is None:
            return  # the status topic
        code = self.conn.client.pubrec_refused.pop(mid, reason.value)
        if code >= 0x80:
            self.count_refused(topic, code)
        else:
            self.counters["published"] += 1

    def count_refused(self, topic: str | None, reason: int) -> None:
        """The broker refused a PUBLISH (a v5 reason code >= 0x80): counted, logged at
        most every 5 s."""
        self.counters["refused"] += 1
        now = time.monotonic()
        if now - self._refused_logged > 5:
            self._refused_logged = now
            log.error("%s refused a PUBLISH%s (reason 0x%02x, %s); %d refused so far. Fix: "
                      "check the broker's ACL for this client", self.conn.what,
                      f" on '{topic}'" if topic else "", reason, _reason_name(reason),
                      self.counters["refused"])

    def _log_topic(self, kind: str, topic: str, fmt: str, *args: object) -> None:
        """Log `fmt` the first time `topic` shows this problem."""
        seen = self._logged.setdefault(kind, set())
        if topic not in seen and len(seen) < _LOGGED_TOPICS:
            seen.add(topic)
            log.error(fmt, *args)

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


def _reason_name(code: int) -> str:
    try:
        return str(ReasonCode(PacketTypes.PUBACK, identifier=code))
    except Exception:  # a code MQTT does not define for PUBACK
        return "unknown reason"


LATE = "diode-late"


def superseded(msg: MqttMessage, why: str = "superseded") -> MqttMessage:
    """`msg` as it goes out where a newer message of its topic may have gone before:
    unretained, marked `diode-late: <why>`."""
    props = dict(msg.properties or {})
    props["user"] = [*props.get("user", ()), [LATE, why]]
    return msg._replace(retain=False, properties=props)
