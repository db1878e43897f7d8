"""TX side: which events to carry, and how. Pure: no session here.

```
crawled model ─► notifiers: the Server object + every Object whose EventNotifier has
   │              SubscribeToEvents
   ├─► select paths: BaseEventType's fields, ConditionType's, AcknowledgeableConditionType's,
   │   AlarmConditionType's, LimitAlarmType's, the ConditionId, and the fields of the
   │   server's own event types (found in the model)
   ▼
EventFilter (no where clause: everything the notifier emits) ─► event monitored items
   (subscriptions.py, within the plant budget)
EventFieldList ─► event_entry() ─► (notifier, EventType, non-null fields) ─► OpcuaEvents
```

A field's browse path crosses as its names joined by "/" (the namespace indexes
are left out: asyncua's server, the mirror, resolves a select clause by names only),
"" for the ConditionId (the NodeId attribute of ConditionType, empty browse path).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from asyncua import ua
from asyncua.common.event_objects import IMPLEMENTED_EVENTS
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import variant_from_binary, variant_to_binary

from agent.opcua.codec import OpcuaEvent
from agent.opcua.model import ModelSnapshot
from agent.opcua.ua import node_id

SERVER = node_id(ua.ObjectIds.Server).to_string()
CONDITION_ID = ""  # the path of the ConditionId field
_O = ua.ObjectIds
_A = ua.AttributeIds
_OBJECT, _VARIABLE, _OBJECT_TYPE = 1, 2, 8
_SUBTYPE = node_id(_O.HasSubtype).to_string()
_FIELD_REFS = {node_id(_O.HasProperty).to_string(), node_id(_O.HasComponent).to_string()}
# Every standard event type: a custom type below one of them is an event type.
STANDARD_EVENT_TYPES = frozenset(node_id(i).to_string() for i in IMPLEMENTED_EVENTS)

# BaseEventType, ConditionType, AcknowledgeableConditionType, AlarmConditionType and
# LimitAlarmType fields an alarm client shows (Part 9); the ConditionId is added last.
STANDARD_FIELDS: tuple[str, ...] = (
    "EventId", "EventType", "SourceNode", "SourceName", "Time", "ReceiveTime", "LocalTime",
    "Message", "Severity",
    "ConditionClassId", "ConditionClassName", "ConditionName", "BranchId", "Retain",
    "EnabledState", "EnabledState/Id", "Quality", "LastSeverity", "Comment", "ClientUserId",
    "AckedState", "AckedState/Id", "ConfirmedState", "ConfirmedState/Id",
    "ActiveState", "ActiveState/Id", "InputNode", "SuppressedOrShelved",
    "HighHighLimit", "HighLimit", "LowLimit", "LowLowLimit",
)

# A path: the (namespace index, name) of each browse name from the event type.
Path = tuple[tuple[int, str], ...]


@dataclass(frozen=True)
class EventSelection:
    """The select clauses of one event filter and the path of each field."""
    paths: tuple[Path, ...]  # () for the ConditionId

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(path_name(p) for p in self.paths)

    def event_filter(self) -> ua.EventFilter:
        evfilter = ua.EventFilter()
        for path in self.paths:
            op = ua.SimpleAttributeOperand()
            if path:
                op.TypeDefinitionId = node_id(_O.BaseEventType)
                op.BrowsePath = [ua.QualifiedName(name, ns) for ns, name in path]
                op.AttributeId = _A.Value
            else:
                op.TypeDefinitionId = node_id(_O.ConditionType)
                op.BrowsePath = []
                op.AttributeId = _A.NodeId
            evfilter.SelectClauses.append(op)
        return evfilter


def decode_variant(data: bytes) -> ua.Variant:
    return variant_from_binary(Buffer(data))


def path_name(path: Path) -> str:
    return "/".join(name for _, name in path)


def selection(snap: ModelSnapshot | None) -> EventSelection:
    """The standard fields, the server's own event types' fields, then the ConditionId."""
    paths: list[Path] = [tuple((0, n) for n in f.split("/")) for f in STANDARD_FIELDS]
    seen = {path_name(p) for p in paths}
    for p in custom_fields(snap) if snap is not None else ():
        if path_name(p) not in seen:
            seen.add(path_name(p))
            paths.append(p)
    paths.append(())
    return EventSelection(tuple(paths))


def _browse_name(attrs: dict[int, bytes]) -> tuple[int, str] | None:
    data = attrs.get(_A.BrowseName)
    if data is None:
        return None
    try:
        qn = decode_variant(data).Value
    except Exception:  # noqa: BLE001 - a name we cannot read is a field we cannot select
        return None
    return (qn.NamespaceIndex, qn.Name) if isinstance(qn, ua.QualifiedName) else None


def custom_fields(snap: ModelSnapshot) -> list[Path]:
    """The variables of the server's own event types (and the properties of those
    variables), as browse paths from the type, in the model's order."""
    types: set[str] = set()
    for n in snap.nodes:  # parents (supertypes) come before their subtypes
        if n.node_class == _OBJECT_TYPE and n.parent_ref == _SUBTYPE and n.parent is not None \
                and (n.parent in STANDARD_EVENT_TYPES or n.parent in types):
            types.add(n.node_id)
    out: list[Path] = []
    under: dict[str, Path] = {}
    for n in snap.nodes:
        if n.node_class != _VARIABLE or n.parent_ref not in _FIELD_REFS or n.parent is None:
            continue
        name = _browse_name(n.attrs)
        if name is None:
            continue
        if n.parent in types:
            path: Path = (name,)
        elif n.parent in under and len(under[n.parent]) == 1:
            path = (*under[n.parent], name)
        else:
            continue
        under[n.node_id] = path
        out.append(path)
    return out


def notifiers(snap: ModelSnapshot | None) -> list[str]:
    """The Server object, then every object of the model whose EventNotifier has
    SubscribeToEvents."""
    out = [SERVER]
    for n in snap.nodes if snap is not None else ():
        if n.node_class != _OBJECT or n.parent_ref == _SUBTYPE:
            continue
        data = n.attrs.get(_A.EventNotifier)
        if data is None:
            continue
        try:
            bits = decode_variant(data).Value
        except Exception:  # noqa: BLE001 - unreadable: it does not say it notifies
            continue
        if isinstance(bits, int) and bits & ua.EventNotifier.SubscribeToEvents.mask:
            out.append(n.node_id)
    return out


def event_entry(notifier: str, names: Sequence[str], fields: Sequence[ua.Variant]
                ) -> OpcuaEvent:
    """One event as it crosses the link: its type and its non-null fields."""
    etype = node_id(_O.BaseEventType).to_string()
    out = []
    for name, v in zip(names, fields, strict=False):
        if v is None or v.Value is None:
            continue
        if name == "EventType" and isinstance(v.Value, ua.NodeId):
            etype = v.Value.to_string()
        out.append((name, variant_to_binary(v)))
    return (notifier, etype, tuple(out))


def entry_size(e: OpcuaEvent) -> int:
    return len(e[0]) + len(e[1]) + sum(len(n) + len(b) + 4 for n, b in e[2])
