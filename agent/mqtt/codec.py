"""The MQTT record on the link, and its hand-written encoder (TX's hot path).

| tag | record      | fields                                                         |
|-----|-------------|----------------------------------------------------------------|
| 1   | MqttMessage | channel, topic, payload, qos, retain, properties|null, carousel |
"""

from __future__ import annotations

from typing import Any, NamedTuple

import cbor2

from agent.link.records import RecordError, register


class _MqttFields(NamedTuple):
    channel: str
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    # MQTT v5 properties in a portable form (see agent/mqtt/props.py); None for 3.1.1.
    properties: dict[str, Any] | None = None
    # True when this is a periodic re-send of retained state, not a fresh message.
    carousel: bool = False


@register
class MqttMessage(_MqttFields):
    """A NamedTuple where the other records are frozen dataclasses: RX builds one per
    message, and a frozen dataclass costs six times as much to build (0.8 against
    0.13 us here, a sixth of RX's time per message). It is just as immutable."""

    __slots__ = ()
    TAG = 1

    def to_list(self) -> list[Any]:
        return [self.TAG, *self]

    @classmethod
    def from_list(cls, f: list[Any]) -> MqttMessage:
        # Exact classes (CBOR decodes to exactly these) and tuple.__new__: RX's hot path.
        _, channel, topic, payload, qos, retain, props, carousel = f
        if channel.__class__ is not str or topic.__class__ is not str \
                or payload.__class__ is not bytes or qos not in (0, 1, 2):
            raise RecordError("mqtt record malformed")
        if props is not None and props.__class__ is not dict:
            raise RecordError("mqtt properties malformed")
        return tuple.__new__(cls, (channel, topic, payload, qos, bool(retain), props,
                                   bool(carousel)))


def _head(major: int, n: int) -> bytes:
    """A CBOR head: major type (shifted) and argument, in the shortest form."""
    if n < 24:
        return _SMALL_HEADS[major | n]
    if n < 0x100:
        return bytes((major | 24, n))
    if n < 0x10000:
        return bytes((major | 25,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes((major | 26,)) + n.to_bytes(4, "big")
    return bytes((major | 27,)) + n.to_bytes(8, "big")


_SMALL_HEADS = [bytes((b,)) for b in range(256)]
_MQTT_HEAD = bytes((0x88, MqttMessage.TAG))  # an array of 8, the tag
_TEXT, _BYTES = 0x60, 0x40
_mqtt_prefixes: dict[str, bytes] = {}  # channel -> array head, tag and channel name


def encode_mqtt(channel: str, topic: str, payload: bytes, qos: int, retain: bool,
                properties: dict[str, Any] | None, carousel: bool = False) -> bytes:
    """`encode(MqttMessage(...))`, byte for byte, without building the record or
    going through cbor2's generic encoder (a third of its cost): TX's hot path."""
    prefix = _mqtt_prefixes.get(channel)
    if prefix is None:
        c = channel.encode()
        prefix = _MQTT_HEAD + _head(_TEXT, len(c)) + c
        if len(_mqtt_prefixes) < 256:  # channels are the few of the config
            _mqtt_prefixes[channel] = prefix
    t = topic.encode()
    return b"".join((prefix, _head(_TEXT, len(t)), t,
                     _head(_BYTES, len(payload)), payload, _SMALL_HEADS[qos],
                     b"\xf5" if retain else b"\xf4",
                     b"\xf6" if properties is None else cbor2.dumps(properties),
                     b"\xf5" if carousel else b"\xf4"))




def encode_message(msg: MqttMessage) -> bytes:
    """`encode(msg)` through the fast path."""
    return encode_mqtt(msg.channel, msg.topic, msg.payload, msg.qos, msg.retain, msg.properties,
                       msg.carousel)
