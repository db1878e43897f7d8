"""The OPC UA records on the link. Pure CBOR: no asyncua here.

| tag | record      | fields                                                                    |
|-----|-------------|---------------------------------------------------------------------------|
| 3   | OpcuaModel  | source, version, index, count, data                                       |
| 4   | OpcuaValues | source, keyframe, [[node_id, variant, status, source_ts, server_ts], ...] |
| 5   | OpcuaNotifiers | source, [node_id, ...]                                                 |
| 6   | OpcuaEvents | source, [[notifier, event_type, [[browse_path, variant], ...]], ...]        |
| 7   | OpcuaModelPart | source, crawl, index, version, data                                    |

OpcuaModel carries one chunk of an OPC UA address-space snapshot (layout in
agent/opcua/model.py): `version` is 16 hex digits of the snapshot's hash,
`data` a slice of its zlib-compressed CBOR. OpcuaValues carries value changes
(`keyframe` false) or a periodic re-send of the last values (`keyframe` true):
`node_id` is an OPC UA node id string, `variant` the value's Variant in OPC UA
binary encoding, `status` the StatusCode as an integer, and the timestamps are
OPC UA DateTime ticks (100 ns since 1601-01-01 UTC) or null.

OpcuaModelPart carries nodes of a crawl in progress (agent/opcua/growth.py): `crawl`
names the crawl, `index` counts its parts from 0, `data` holds nodes (zlib CBOR);
the crawl's last part has no nodes and the model's `version`, "" in the others.

OpcuaNotifiers names every node TX carries the events of (agent/opcua/events.py):
the mirror lets IT clients subscribe to events there and nowhere else. It is
state: sent when it changes and with every model carousel round. OpcuaEvents
carries events, which are not state (never re-sent): per event the notifier it
came from, its EventType node id and its non-null fields, each a browse path
from the event type (names joined by "/", e.g. "ActiveState/Id"; "" for the
ConditionId, the NodeId attribute of ConditionType) with its Variant in OPC UA
binary encoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.link.records import RecordError, register


@register
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


@register
@dataclass(frozen=True, slots=True)
class OpcuaModelPart:
    TAG = 7
    source: str
    crawl: str
    index: int
    version: str
    data: bytes

    def to_list(self) -> list[Any]:
        return [self.TAG, self.source, self.crawl, self.index, self.version, self.data]

    @classmethod
    def from_list(cls, f: list[Any]) -> OpcuaModelPart:
        _, source, crawl, index, version, data = f
        if not (isinstance(source, str) and isinstance(crawl, str) and isinstance(index, int)
                and not isinstance(index, bool) and index >= 0 and isinstance(version, str)
                and isinstance(data, bytes)):
            raise RecordError("opcua model part malformed")
        return cls(source, crawl, index, version, data)


# node_id, variant (OPC UA binary), status code, source ticks, server ticks
OpcuaValue = tuple[str, bytes, int, int | None, int | None]


def _is_ticks(v: Any) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool))


@register
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




@register
@dataclass(frozen=True, slots=True)
class OpcuaNotifiers:
    TAG = 5
    source: str
    notifiers: tuple[str, ...]

    def to_list(self) -> list[Any]:
        return [self.TAG, self.source, list(self.notifiers)]

    @classmethod
    def from_list(cls, f: list[Any]) -> OpcuaNotifiers:
        _, source, notifiers = f
        if not (isinstance(source, str) and isinstance(notifiers, list)
                and all(isinstance(n, str) for n in notifiers)):
            raise RecordError("opcua notifiers malformed")
        return cls(source, tuple(notifiers))


# browse path ("A/B"; "" for the ConditionId), variant (OPC UA binary)
EventField = tuple[str, bytes]
# notifier, event type, fields
OpcuaEvent = tuple[str, str, tuple[EventField, ...]]


@register
@dataclass(frozen=True, slots=True)
class OpcuaEvents:
    TAG = 6
    source: str
    events: tuple[OpcuaEvent, ...]

    def to_list(self) -> list[Any]:
        return [self.TAG, self.source,
                [[n, t, [list(f) for f in fields]] for n, t, fields in self.events]]

    @classmethod
    def from_list(cls, f: list[Any]) -> OpcuaEvents:
        _, source, events = f
        if not (isinstance(source, str) and isinstance(events, list)):
            raise RecordError("opcua events malformed")
        out: list[OpcuaEvent] = []
        for e in events:
            if not (isinstance(e, list) and len(e) == 3 and isinstance(e[0], str)
                    and isinstance(e[1], str) and isinstance(e[2], list)
                    and all(isinstance(x, list) and len(x) == 2 and isinstance(x[0], str)
                            and isinstance(x[1], bytes) for x in e[2])):
                raise RecordError("opcua event entry malformed")
            out.append((e[0], e[1], tuple((x[0], x[1]) for x in e[2])))
        return cls(source, tuple(out))
