"""Records: what frames carry. Each record is a CBOR array `[tag, fields...]`.

| tag | record      | fields                                                        |
|-----|-------------|---------------------------------------------------------------|
| 0   | Heartbeat   | tx_time, interval, repeat, counters{str:int}, sources{str:str} |
| 1   | MqttMessage | channel, topic, payload, qos, retain, properties|null, carousel |
| 2   | Fragment    | frag_id, index, count, chunk                                  |
| 3   | OpcuaModel  | source, version, index, count, data                           |
| 4   | OpcuaValues | source, keyframe, [[node_id, variant, status, source_ts, server_ts], ...] |

OpcuaModel carries one chunk of an OPC UA address-space snapshot (layout in
agent/opcua_model.py): `version` is 16 hex digits of the snapshot's hash,
`data` a slice of its zlib-compressed CBOR. OpcuaValues carries value changes
(`keyframe` false) or a periodic re-send of the last values (`keyframe` true):
`node_id` is an OPC UA node id string, `variant` the value's Variant in OPC UA
binary encoding, `status` the StatusCode as an integer, and the timestamps are
OPC UA DateTime ticks (100 ns since 1601-01-01 UTC) or null.

A receiver skips (and counts) tags it does not know, so newer TX versions can
add record types without breaking older RX boards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import cbor2


class RecordError(ValueError):
    """A record that authenticated but does not decode: a TX bug or a version skew."""


class UnknownRecord(RecordError):
    pass


@dataclass(frozen=True, slots=True)
class Heartbeat:
    TAG = 0
    tx_time: float
    interval: float
    repeat: int
    counters: dict[str, int] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def to_list(self) -> list[Any]:
        return [self.TAG, self.tx_time, self.interval, self.repeat, self.counters, self.sources]

    @classmethod
    def from_list(cls, f: list[Any]) -> Heartbeat:
        _, tx_time, interval, repeat, counters, sources = f
        if not (isinstance(counters, dict) and isinstance(sources, dict)
                and all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                        for k, v in counters.items())
                and all(isinstance(k, str) and isinstance(v, str) for k, v in sources.items())):
            raise RecordError("heartbeat maps malformed")
        return cls(float(tx_time), float(interval), int(repeat), counters, sources)


class _MqttFields(NamedTuple):
    channel: str
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    # MQTT v5 properties in a portable form (see sources/mqtt_props.py); None for 3.1.1.
    properties: dict[str, Any] | None = None
    # True when this is a periodic re-send of retained state, not a fresh message.
    carousel: bool = False


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


@dataclass(frozen=True, slots=True)
class Fragment:
    TAG = 2
    frag_id: int
    index: int
    count: int
    chunk: bytes

    def to_list(self) -> list[Any]:
        return [self.TAG, self.frag_id, self.index, self.count, self.chunk]

    @classmethod
    def from_list(cls, f: list[Any]) -> Fragment:
        _, frag_id, index, count, chunk = f
        if not (isinstance(chunk, bytes) and 0 <= index < count):
            raise RecordError("fragment malformed")
        return cls(int(frag_id), int(index), int(count), chunk)


@dataclass(frozen=True, slots=True)
class OpcuaModel:
    TAG = 3
    source: str
    version: str
    index: int
    count: int
    data: bytes

    def to_list(self) -> list[Any]:
        return [self.TAG, self.source, self.version, self.index, self.count, self.data]

    @classmethod
    def from_list(cls, f: list[Any]) -> OpcuaModel:
        _, source, version, index, count, data = f
        if not (isinstance(source, str) and isinstance(version, str) and isinstance(data, bytes)
                and isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
            raise RecordError("opcua model chunk malformed")
        return cls(source, version, index, count, data)


# node_id, variant (OPC UA binary), status code, source ticks, server ticks
OpcuaValue = tuple[str, bytes, int, int | None, int | None]


def _is_ticks(v: Any) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool))


@dataclass(frozen=True, slots=True)
class OpcuaValues:
    TAG = 4
    source: str
    keyframe: bool
    values: tuple[OpcuaValue, ...]

    def to_list(self) -> list[Any]:
        return [self.TAG, self.source, self.keyframe, [list(v) for v in self.values]]

    @classmethod
    def from_list(cls, f: list[Any]) -> OpcuaValues:
        _, source, keyframe, values = f
        if not (isinstance(source, str) and isinstance(values, list)):
            raise RecordError("opcua values malformed")
        out: list[OpcuaValue] = []
        for v in values:
            if not (isinstance(v, list) and len(v) == 5 and isinstance(v[0], str)
                    and isinstance(v[1], bytes) and isinstance(v[2], int)
                    and _is_ticks(v[3]) and _is_ticks(v[4])):
                raise RecordError("opcua value entry malformed")
            out.append((v[0], v[1], v[2], v[3], v[4]))
        return cls(source, bool(keyframe), tuple(out))


Record = Heartbeat | MqttMessage | Fragment | OpcuaModel | OpcuaValues
_BY_TAG: dict[int, Any] = {c.TAG: c for c in (Heartbeat, MqttMessage, Fragment, OpcuaModel,
                                                OpcuaValues)}


def encode(record: Record) -> bytes:
    return cbor2.dumps(record.to_list())


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
                properties: dict[str, Any] | None) -> bytes:
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
                     b"\xf6" if properties is None else cbor2.dumps(properties), b"\xf4"))


def decode_item(item: Any) -> Record:
    """Turn one decoded CBOR item into a record; RecordError if it is not one."""
    if not isinstance(item, list) or not item or not isinstance(item[0], int):
        raise RecordError("record is not a tagged array")
    cls = _BY_TAG.get(item[0])
    if cls is None:
        raise UnknownRecord(f"unknown record tag {item[0]}")
    try:
        rec: Record = cls.from_list(item)
    except RecordError:
        raise
    except (ValueError, TypeError, OverflowError) as exc:
        raise RecordError(f"{cls.__name__} malformed: {exc}") from None
    return rec


def decode(data: bytes) -> Record:
    try:
        item = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types on bad input
        raise RecordError(f"not CBOR: {exc}") from None
    return decode_item(item)
