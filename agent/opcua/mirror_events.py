"""RX side: the plant's events, re-emitted by the mirror from the same notifiers.

```
OpcuaNotifiers ─► EventNotifier = SubscribeToEvents on those nodes (the Server object
                  included), 0 everywhere else (build.py builds every object with 0):
                  an IT client can subscribe to events only where some are carried
OpcuaEvents ───► one asyncua Event per plant event: emitting node = the notifier,
                 EventType and every field as the plant sent it ─► asyncua's monitored
                 items, which pick each client's select clauses by browse path
                 ("ActiveState/Id") and apply its where clause
conditions ────► asyncua keeps the last event of each ConditionId whose Retain is true;
                 ConditionRefresh(2) re-emits them between RefreshStart and RefreshEnd
                 (services.py lets that one call through: it changes nothing upstream)
```

The mirror's events are the plant's: EventId, Time, ReceiveTime and Message are
the plant's own, not set here (asyncua's EventGenerator would replace them).
Acknowledge, Confirm, AddComment, Enable and Disable are refused like every call.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from asyncua import Server, ua
from asyncua.common.events import Event
from asyncua.server.address_space import AttributeValue

from agent.opcua.codec import OpcuaEvent
from agent.opcua.events import CONDITION_ID, decode_variant
from agent.opcua.ua import node_id

log = logging.getLogger("diode.sink.opcua")

A = ua.AttributeIds
SERVER = node_id(ua.ObjectIds.Server)
_NOTIFIES = ua.EventNotifier.SubscribeToEvents.mask


def prepare(server: Server) -> None:
    """Before `server.init()`: have asyncua bind ConditionRefresh and its Refresh events."""
    server.iserver.bind_condition_methods = True


def plant_event(entry: OpcuaEvent) -> Event | None:
    """An asyncua Event carrying the plant's fields as they are (None if its notifier or
    type is not a node id)."""
    notifier, etype, fields = entry
    try:
        ev = Event(ua.NodeId.from_string(notifier))
        ev.add_property("EventType", ua.NodeId.from_string(etype), ua.VariantType.NodeId)
    except (ValueError, TypeError, ua.UaError):
        return None
    for path, data in fields:
        try:
            v = decode_variant(data)
        except Exception:  # noqa: BLE001 - a field that does not decode is left out
            continue
        name = "NodeId" if path == CONDITION_ID else path  # asyncua's name for ConditionId
        if name in ev.internal_properties:
            continue
        ev.add_property(name, v.Value, v.VariantType)
    return ev


class MirrorEvents:
    """The mirror's notifiers and the events it emits from them."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.notifiers: frozenset[ua.NodeId] = frozenset()
        self.counters: dict[str, int] = dict.fromkeys(
            ("events_emitted", "events_bad", "notifier_updates"), 0)

    async def start(self) -> None:
        """The Server object claims nothing until TX says it carries its events (asyncua
        set SubscribeToEvents there for its own Refresh events)."""
        self._set(SERVER, False)

    def announce(self, notifiers: Iterable[str]) -> None:
        new = set()
        for s in notifiers:
            try:
                new.add(ua.NodeId.from_string(s))
            except (ValueError, TypeError, ua.UaError):
                continue
        for n in self.notifiers - new:
            self._set(n, False)
        self.notifiers = frozenset(new)
        self.counters["notifier_updates"] += 1
        self.apply()

    def apply(self) -> None:
        """SubscribeToEvents on the announced notifiers the mirror has (after each model
        install too: nodes are built and updated with EventNotifier 0)."""
        for n in self.notifiers:
            self._set(n, True)

    def _set(self, node: ua.NodeId, notifies: bool) -> None:
        nd = self.server.iserver.aspace.get(node)
        if nd is None or A.EventNotifier not in nd.attributes:
            return
        old = nd.attributes[A.EventNotifier].value
        bits = old.Value.Value if old is not None and old.Value is not None else 0
        bits = (int(bits or 0) | _NOTIFIES) if notifies else (int(bits or 0) & ~_NOTIFIES)
        nd.attributes[A.EventNotifier] = AttributeValue(
            ua.DataValue(ua.Variant(bits, ua.VariantType.Byte)))

    async def emit(self, entries: Iterable[OpcuaEvent]) -> None:
        subs = self.server.iserver.subscription_service
        for entry in entries:
            ev: Any = plant_event(entry)
            if ev is None:
                self.counters["events_bad"] += 1
                continue
            try:
                await subs.trigger_event(ev)
            except Exception:  # one event an IT client's filter chokes on must not stop us
                self.counters["events_bad"] += 1
                log.debug("event %s not emitted", entry[1], exc_info=True)
                continue
            self.counters["events_emitted"] += 1

    def status(self) -> dict[str, int]:
        conditions = getattr(self.server.iserver.subscription_service, "_conditions", {})
        return {**self.counters, "event_notifiers": len(self.notifiers),
                "conditions_retained": len(conditions)}
