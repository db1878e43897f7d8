"""Late records never overwrite newer state: the RX core tells RECOVERED from
SUPERSEDED by key, the MQTT sink marks and unretains what was overtaken, and the
OPC UA mirror keeps each variable's newest value by its source timestamp."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from asyncua import ua

from agent.adapter import Arrival
from agent.link import records
from agent.link.health import HealthParams, LinkHealth
from agent.mqtt.codec import MqttMessage
from agent.mqtt.sink import LATE, superseded
from agent.opcua.codec import OpcuaModel, OpcuaValues
from agent.opcua.late import LateRecord, still_current
from agent.opcua.ticks import to_ticks as ticks
from agent.rxcore import RxCore

from .link.link_kit import T0, Tx, epoch_at, receiver
from .test_cores import ListSink

EPOCH = epoch_at(T0)


class ArrivalSink(ListSink):
    """Notes (topic, number, arrival) of each message."""

    def __init__(self) -> None:
        super().__init__("mqtt:ch")

    def submit(self, record: Any, now: float, arrival: Arrival = Arrival.LIVE,
               raw: bytes | None = None) -> None:
        self.got.append((record.topic, int.from_bytes(record.payload[:4], "big"), arrival))


def msg(topic: str, i: int) -> MqttMessage:
    return MqttMessage("ch", topic, i.to_bytes(4, "big"), qos=1, retain=True)


def test_a_late_record_behind_a_newer_one_of_its_topic_arrives_superseded() -> None:
    tx = Tx(EPOCH, recovery=True)
    first = receiver()
    for d in tx.frame(msg("a", 0)):
        first.receive(d, 0.0)
    memory = first.memory()
    away = [tx.frame(msg(t, i)) for t, i in (("a", 1), ("b", 2), ("a", 3))]  # seqs 1..3
    assert len(away) == 3
    sink = ArrivalSink()
    core = RxCore(receiver(memory), LinkHealth(HealthParams()), {("mqtt", "ch"): sink})
    for d in tx.frame(msg("a", 4)) + tx.resent([3, 2, 1]):  # the cycle comes newest first
        core.datagram(d, 1.0)
    assert sink.got == [("a", 4, Arrival.LIVE), ("a", 3, Arrival.SUPERSEDED),
                        ("b", 2, Arrival.RECOVERED), ("a", 1, Arrival.SUPERSEDED)]
    assert core.counters["superseded"] == 2
    # nothing missed any more: records go out LIVE, and the notes are gone
    for d in tx.frame(msg("a", 5)):
        core.datagram(d, 2.0)
    assert sink.got[-1] == ("a", 5, Arrival.LIVE) and core._newest is None


def test_every_record_of_the_last_missed_frame_arrives_late() -> None:
    tx = Tx(EPOCH, recovery=True)
    first = receiver()
    for d in tx.frame(msg("a", 0)):
        first.receive(d, 0.0)
    memory = first.memory()
    for rec in (msg("b", 1), msg("c", 2)):        # one frame of two, while RX is away
        tx.sender.push(records.encode(rec), 0.0)
    tx.sender.drain(0.0)
    sink = ArrivalSink()
    core = RxCore(receiver(memory), LinkHealth(HealthParams()), {("mqtt", "ch"): sink})
    for d in tx.frame(msg("b", 3)) + tx.resent([1]):
        core.datagram(d, 1.0)
    # the frame completes what RX missed: its second record is as late as its first
    assert sink.got == [("b", 3, Arrival.LIVE), ("b", 1, Arrival.SUPERSEDED),
                        ("c", 2, Arrival.RECOVERED)]


def test_what_a_new_board_missed_arrives_unplaced_unless_overtaken() -> None:
    tx = Tx(EPOCH, recovery=True)
    for t, i in (("a", 0), ("b", 1)):            # before this RX ran
        tx.frame(msg(t, i))
    sink = ArrivalSink()
    core = RxCore(receiver(), LinkHealth(HealthParams()), {("mqtt", "ch"): sink})
    for d in tx.frame(msg("a", 2)) + tx.resent([0, 1]):
        core.datagram(d, 1.0)
    assert sink.got == [("a", 2, Arrival.LIVE), ("a", 0, Arrival.SUPERSEDED),
                        ("b", 1, Arrival.UNPLACED)]


def test_the_mqtt_sink_unretains_and_marks_what_was_overtaken() -> None:
    m = MqttMessage("ch", "r/1", b"7", 1, True, {"user": [["site", "x"]], "expiry": 30})
    late = superseded(m)
    assert late.retain is False and late.payload == b"7" and late.topic == "r/1"
    assert late.properties == {"user": [["site", "x"], [LATE, "superseded"]], "expiry": 30}
    assert superseded(m._replace(properties=None), "unplaced").properties == \
        {"user": [[LATE, "unplaced"]]}


def _dv(when: datetime | None) -> ua.DataValue:
    return ua.DataValue(ua.Variant(1.0, ua.VariantType.Double), SourceTimestamp=when)


def test_a_late_opcua_value_applies_only_where_it_is_not_older() -> None:
    t = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
    shown = {"n1": _dv(t), "n2": _dv(t), "n3": None, "n4": _dv(None)}
    old, same, new = ticks(t) - 10_000_000, ticks(t), ticks(t) + 1
    values = (("n1", b"", 0, old, None), ("n2", b"", 0, new, None), ("n3", b"", 0, old, None),
              ("n4", b"", 0, old, None), ("n1", b"", 0, same, None), ("n2", b"", 0, None, None))
    counters = {"late_superseded": 0}
    kept = still_current(LateRecord(OpcuaValues("p", False, values), Arrival.RECOVERED),
                         shown.get, counters)
    assert isinstance(kept, OpcuaValues)
    assert [v[0] for v in kept.values] == ["n2", "n3", "n4", "n1"]
    assert counters["late_superseded"] == 2
    model = OpcuaModel("p", "v1", 0, 1, b"")
    assert still_current(LateRecord(model, Arrival.SUPERSEDED), shown.get, counters) is None
    assert still_current(LateRecord(model, Arrival.RECOVERED), shown.get, counters) == model
    assert counters["late_superseded"] == 3

