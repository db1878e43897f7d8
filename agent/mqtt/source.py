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

A retained topic cleared on OT (an empty retained payload) stays in the
carousel as a deletion (a tombstone) for `tombstone_period`, so an RX that
was down, or lost the frames of the clear, clears it on IT too.

With MQTT 5 the subscription uses retainAsPublished, so the retain flag is
exact. A 3.1.1 broker clears the flag on live messages: a topic already known
to be retained is taken to stay retained, and once a carousel period a second,
short-lived subscription reads the broker's retained store
(agent/mqtt/retained.py), so a topic that became retained while TX was
subscribed reaches IT as retained within one period.

Message expiry (v5) counts from arrival here: what remains is worked out when
the pump takes a message for the link, and a retained copy keeps its deadline,
so the carousel never re-sends an expired message. A message whose payload is
larger than `max_message_size` is refused: counted (`too_large`), logged once
per topic, and acknowledged to the OT broker, which would otherwise deliver
it again at every reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from agent.mqtt.retained import read_retained
from agent.queues import MemoryQueue, SpoolQueue

log = logging.getLogger("diode.source.mqtt")

# topic, payload, qos, retain, properties, arrival (wall clock)
Entry = tuple[str, bytes, int, bool, dict[str, Any] | None, float]
# what the carousel re-sends of a topic: payload, qos, properties, expiry deadline (wall)
Retained = tuple[bytes, int, dict[str, Any] | None, float | None]
_LOGGED_TOPICS = 1000  # too-large topics logged one by one; beyond, only counted


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
        spool = ctx.open_spool(ch.name, largest_record=ch.largest_record)
        self.queue: MemoryQueue[Entry] | SpoolQueue[Entry]
        if spool is None:
            self.queue = MemoryQueue(ch.queue_limit)
        else:
            conflating = ch.overflow == "conflate"
            # retained topics are state: when the spool is full, keep only their latest
            self.queue = SpoolQueue(spool, _encode_entry, _decode_entry,
                                    lambda e: e[0] if e[3] or conflating else None)
        # What the link has been given: topic -> payload, qos, properties, deadline.
        self.retained: dict[str, Retained] = {}
        # Topics cleared on OT, re-sent as deletions until then (wall): topic -> (until, qos)
        self.tombstones: dict[str, tuple[float, int]] = {}
        self._retained_topics: set[str] = set()  # as seen on arrival (3.1.1 guess)
        self._counters = {"received": 0, "queue_dropped": 0, "expired": 0, "too_large": 0,
                          "retained_found": 0}
        self._drop_logged = 0.0
        self._large_logged: set[str] = set()
        self._live: set[str] | None = None  # topics arriving while the retained store is read
        self._refresh: asyncio.Task[None] | None = None
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
        if not self._v5:
            self._refresh = asyncio.get_running_loop().create_task(self._refresh_retained())

    async def stop(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh
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
        if len(payload) > self.ch.max_message_size:
            self._too_large(topic, len(payload), qos, mid)
            return
        props = None if properties is None else mqtt_props.from_paho(properties)
        if not self._v5:
            retain = retain or topic in self._retained_topics
            if retain:
                if payload:
                    self._retained_topics.add(topic)
                else:
                    self._retained_topics.discard(topic)
            if self._live is not None:
                self._live.add(topic)
        ack = None
        if qos and self.queue.manual_ack:
            client = self.conn.client
            ack = lambda: client.ack(mid, qos)  # noqa: E731 (a closure is the point)
        try:
            queued = self.queue.put((topic, payload, qos, retain, props, time.time()), ack)
        except ValueError:  # the spool cannot hold it (huge v5 properties)
            self._too_large(topic, len(payload), qos, mid, "with its properties, larger than "
                            "a spool segment")
            return
        if not queued:
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

    def _too_large(self, topic: str, size: int, qos: int, mid: int, why: str = "") -> None:
        """Refuse a message this channel may not carry: counted, logged once per topic,
        and acknowledged, or the OT broker would deliver it again at every reconnect."""
        self._counters["too_large"] += 1
        if qos and self.queue.manual_ack:
            self.conn.client.ack(mid, qos)
        if topic in self.retained:  # what the carousel holds is no longer OT's state
            self.retained.pop(topic, None)
        if topic not in self._large_logged and len(self._large_logged) < _LOGGED_TOPICS:
            self._large_logged.add(topic)
            log.error("channel '%s': message on '%s' of %d bytes is larger than "
                      "max_message_size (%d)%s; it is not carried (too_large: %d so far). "
                      "Fix: raise max_message_size for this channel on TX and RX, or publish "
                      "smaller messages", self.ch.name, topic, size, self.ch.max_message_size,
                      f" ({why})" if why else "", self._counters["too_large"])

    def take(self, wall: float, limit: int) -> list[tuple[bytes | None, object]]:
        """Encoded records with the expiry less the wait (None: expired while queued).
        Updates the retained copy the carousel re-sends, and the deletions it re-sends."""
        out: list[tuple[bytes | None, object]] = []
        name, retained = self.ch.name, self.retained
        for tag, (topic, payload, qos, retain, props, arrived) in self.queue.take(limit):
            deadline = None
            if props is not None and "expiry" in props:
                props = mqtt_props.age(props, wall - arrived)
                if mqtt_props.expired(props):
                    self._counters["expired"] += 1
                    if retain:  # the broker has dropped it too
                        retained.pop(topic, None)
                    out.append((None, tag))
                    continue
                deadline = wall + props["expiry"] if props is not None else None
            if retain:
                if payload:
                    retained[topic] = (payload, qos, props, deadline)
                    if self.tombstones:
                        self.tombstones.pop(topic, None)
                else:
                    retained.pop(topic, None)
                    if self.ch.tombstone_period > 0:
                        self.tombstones[topic] = (wall + self.ch.tombstone_period, qos)
            out.append((encode_mqtt(name, topic, payload, qos, retain, props), tag))
        return out

    def _carousel_round(self) -> Iterator[bytes]:
        """Re-sends of the retained state, each read when the scheduler takes it: a
        round spans many loop turns, and a topic updated meanwhile must go out with
        its new value, never the old one. Expired messages are dropped, not re-sent;
        then the deletions of topics cleared less than `tombstone_period` ago."""
        name = self.ch.name
        for topic in list(self.retained):
            item = self.retained.get(topic)
            if item is None:
                continue
            payload, qos, props, deadline = item
            if deadline is not None:
                left = deadline - time.time()
                if left <= 0:
                    del self.retained[topic]
                    continue
                props = {**(props or {}), "expiry": round(left, 3)}
            yield encode_mqtt(name, topic, payload, qos, True, props, carousel=True)
        for topic in list(self.tombstones):
            tomb = self.tombstones.get(topic)
            if tomb is None:
                continue
            until, qos = tomb
            if until <= time.time():
                del self.tombstones[topic]
                continue
            yield encode_mqtt(name, topic, b"", qos, True, None, carousel=True)

    async def _refresh_retained(self) -> None:
        """3.1.1 only: once a carousel period, read the broker's retained store, so a
        topic that became retained while TX was subscribed (its live deliveries carried
        no retain flag) is known as retained, and sent as such to IT."""
        period = self.ch.carousel_period
        await asyncio.sleep(min(period / 2, 5.0))
        while True:
            if self.conn.connected:
                self._live = set()
                try:
                    found = await read_retained(self.ch.broker, self.ch.topics, self.ch.qos,
                                                f"{self.conn.what}, retained store")
                    if found is not None:
                        self._apply_retained(found, self._live)
                finally:
                    self._live = None
            await asyncio.sleep(period)

    def _apply_retained(self, found: dict[str, tuple[bytes, int]], live: set[str]) -> None:
        now = time.time()
        for topic, (payload, qos) in found.items():
            if not payload or len(payload) > self.ch.max_message_size:
                continue
            self._retained_topics.add(topic)
            known = self.retained.get(topic)
            if topic in live or (known is not None and known[0] == payload):
                continue  # a live message since is newer; or the link has it as retained
            self._counters["retained_found"] += 1
            if self.queue.put((topic, payload, qos, True, None, now), None):
                self._wake()
