"""OPC UA records the mirror gets late (TX's recovery window brought frames RX had
missed): what of them may still apply.

A late record may be older than what the mirror already shows. A model chunk
that a newer one overtook (SUPERSEDED, agent/adapter.py) is dropped: the newer
model stands. A late value applies only if its source timestamp is not older
than the node's current one, so a variable never steps back in time; a late
value without a source timestamp applies only to a node that has no value yet.
What is dropped is counted in `late_superseded`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from asyncua import ua

from agent.adapter import Arrival
from agent.link.records import Record
from agent.opcua.codec import OpcuaModel, OpcuaNotifiers, OpcuaValue, OpcuaValues
from agent.opcua.ticks import to_ticks


@dataclass(frozen=True, slots=True)
class LateRecord:
    record: Record
    arrival: Arrival


def still_current(late: LateRecord, current: Callable[[str], ua.DataValue | None],
                  counters: dict[str, int]) -> Record | None:
    """The part of `late` that may apply, given each node's `current` value."""
    record = late.record
    if isinstance(record, OpcuaModel | OpcuaNotifiers):
        if late.arrival is Arrival.SUPERSEDED:
            counters["late_superseded"] += 1
            return None
        return record
    if not isinstance(record, OpcuaValues):
        return record
    keep: list[OpcuaValue] = []
    for entry in record.values:
        if _newer(entry, current(entry[0])):
            keep.append(entry)
        else:
            counters["late_superseded"] += 1
    if not keep:
        return None
    return OpcuaValues(record.source, record.keyframe, tuple(keep))


def _newer(entry: OpcuaValue, now: ua.DataValue | None) -> bool:
    if now is None:
        return True
    if entry[3] is None:
        return False
    shown = now.SourceTimestamp
    return shown is None or entry[3] >= to_ticks(shown)


def current_values(vars_: Mapping[str, object]) -> Callable[[str], ua.DataValue | None]:
    """A look-up of each mirrored variable's last value from the source."""
    def current(node: str) -> ua.DataValue | None:
        var = vars_.get(node)
        return getattr(var, "fresh", None)
    return current
