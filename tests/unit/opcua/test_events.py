"""Events without a server: the OpcuaNotifiers and OpcuaEvents records, which notifiers
and fields TX picks from a model (agent/opcua/events.py), and how the mirror's event
answers an IT client's select clauses (agent/opcua/mirror_events.py)."""

from __future__ import annotations

from typing import Any

import pytest
from asyncua import ua
from hypothesis import given
from hypothesis import strategies as st

from agent.link import records
from agent.opcua import events
from agent.opcua.codec import OpcuaEvents, OpcuaNotifiers
from agent.opcua.mirror_events import plant_event
from agent.opcua.model import ModelSnapshot, NodeRecord
from agent.opcua.subscriptions import Monitoring
from agent.opcua.ua import node_id

A = ua.AttributeIds
V = ua.VariantType


def variant(value: Any, vtype: ua.VariantType) -> bytes:
    from asyncua.ua.ua_binary import variant_to_binary
    return variant_to_binary(ua.Variant(value, vtype))


def name(n: str, ns: int = 2) -> dict[int, bytes]:
    return {A.BrowseName: variant(ua.QualifiedName(n, ns), V.QualifiedName)}


# -- records -----------------------------------------------------------------------------


def test_event_records_round_trip() -> None:
    notifiers = OpcuaNotifiers("plant", ("i=2253", "ns=2;s=Boiler"))
    evs = OpcuaEvents("plant", (
        ("ns=2;s=Boiler", "ns=2;i=5", (("Message", variant(ua.LocalizedText("x"),
                                                           V.LocalizedText)),
                                       ("ActiveState/Id", variant(True, V.Boolean)),
                                       ("", variant(node_id("A", 2), V.NodeId)))),
        ("i=2253", "i=2041", ())))
    for rec in (notifiers, evs):
        assert records.decode(records.encode(rec)) == rec


@pytest.mark.parametrize("item", [
    [5, "plant", "i=2253"],                    # not a list
    [5, "plant", ["i=2253", 7]],
    [6, "plant", [["i=2253", "i=2041"]]],      # entry too short
    [6, "plant", [["i=2253", "i=2041", [["Message", "not bytes"]]]]],
    [6, "plant", [["i=2253", 2041, []]]],
    [6, 1, []],
])
def test_malformed_event_records_are_record_errors(item: list[Any]) -> None:
    with pytest.raises(records.RecordError):
        records.decode_item(item)


@given(st.lists(st.one_of(st.none(), st.integers(), st.text(), st.binary(),
                          st.lists(st.one_of(st.text(), st.binary(), st.lists(st.text()))))))
def test_arbitrary_event_fields_never_crash(fields: list[Any]) -> None:
    for tag in (5, 6):
        try:
            records.decode_item([tag, *fields])
        except (records.RecordError, ValueError, TypeError):
            pass


# -- what TX picks -------------------------------------------------------------------------


def model() -> ModelSnapshot:
    sub = node_id(ua.ObjectIds.HasSubtype).to_string()
    prop = node_id(ua.ObjectIds.HasProperty).to_string()
    comp = node_id(ua.ObjectIds.HasComponent).to_string()
    notify = {A.EventNotifier: variant(1, V.Byte)}
    return ModelSnapshot(("http://opcfoundation.org/UA/", "urn:x", "urn:plant"), (
        NodeRecord("ns=2;i=5", 8, "i=2041", sub, None, name("BoilerEventType")),
        NodeRecord("ns=2;i=6", 2, "ns=2;i=5", prop, None, name("Temperature")),
        NodeRecord("ns=2;i=7", 8, "ns=2;i=5", sub, None, name("HotBoilerEventType")),
        NodeRecord("ns=2;i=8", 2, "ns=2;i=7", comp, None, name("Phase")),
        NodeRecord("ns=2;i=9", 2, "ns=2;i=8", prop, None, name("Id", 0)),
        NodeRecord("ns=2;i=10", 8, "i=58", sub, None, name("NotAnEventType")),
        NodeRecord("ns=2;i=11", 2, "ns=2;i=10", prop, None, name("Ignored")),
        NodeRecord("ns=2;s=Boiler", 1, "i=85", comp, None, {**name("Boiler"), **notify}),
        NodeRecord("ns=2;s=Quiet", 1, "i=85", comp, None,
                   {**name("Quiet"), A.EventNotifier: variant(0, V.Byte)}),
        NodeRecord("ns=2;s=Old", 1, "i=85", comp, None, name("Old")),  # no EventNotifier
        NodeRecord("ns=2;s=Var", 2, "ns=2;s=Boiler", comp, None, {**name("Var"), **notify}),
    ))


def test_notifiers_are_the_server_and_objects_that_say_so() -> None:
    assert events.notifiers(model()) == ["i=2253", "ns=2;s=Boiler"]
    assert events.notifiers(None) == ["i=2253"]


def test_selection_has_standard_custom_and_condition_id_fields() -> None:
    sel = events.selection(model())
    names = sel.names
    for f in ("EventId", "EventType", "SourceName", "Message", "Severity", "Time",
              "ActiveState/Id", "AckedState/Id", "ConfirmedState/Id", "EnabledState/Id",
              "Retain", "ConditionName", "Temperature", "Phase", "Phase/Id"):
        assert f in names, f
    assert "Ignored" not in names  # not an event type's
    assert names[-1] == "" and len(set(names)) == len(names)
    flt = sel.event_filter()
    by_name = dict(zip(names, flt.SelectClauses, strict=True))
    assert [(q.NamespaceIndex, q.Name) for q in by_name["ActiveState/Id"].BrowsePath] == \
        [(0, "ActiveState"), (0, "Id")]
    assert [(q.NamespaceIndex, q.Name) for q in by_name["Temperature"].BrowsePath] == \
        [(2, "Temperature")]
    cid = by_name[""]
    assert cid.AttributeId == A.NodeId and not cid.BrowsePath
    assert cid.TypeDefinitionId == node_id(ua.ObjectIds.ConditionType)
    assert not flt.WhereClause.Elements  # everything the notifier emits


def test_event_entry_keeps_the_type_and_non_null_fields() -> None:
    names = ("EventType", "Message", "Severity", "Temperature", "")
    got = events.event_entry("ns=2;s=Boiler", names, [
        ua.Variant(node_id(5, 2), V.NodeId), ua.Variant(ua.LocalizedText("hot"), V.LocalizedText),
        ua.Variant(700, V.UInt16), ua.Variant(), ua.Variant(node_id("Alarm", 2), V.NodeId)])
    assert got[0] == "ns=2;s=Boiler" and got[1] == "ns=2;i=5"
    assert [f for f, _ in got[2]] == ["EventType", "Message", "Severity", ""]
    assert events.decode_variant(dict(got[2])["Severity"]) == ua.Variant(700, V.UInt16)
    assert events.event_entry("i=2253", ("Message",), [ua.Variant("x")])[1] == "i=2041"


# -- how the mirror answers -------------------------------------------------------------


def clause(path: list[tuple[int, str]], attr: int = A.Value) -> ua.SimpleAttributeOperand:
    op = ua.SimpleAttributeOperand()
    op.BrowsePath = [ua.QualifiedName(n, ns) for ns, n in path]
    op.AttributeId = attr  # type: ignore[assignment]
    return op


def test_mirror_event_answers_select_clauses_by_browse_path() -> None:
    names = ("EventType", "Message", "Severity", "ActiveState/Id", "Temperature", "")
    entry = events.event_entry("ns=2;s=Boiler", names, [
        ua.Variant(node_id(ua.ObjectIds.AlarmConditionType), V.NodeId),
        ua.Variant(ua.LocalizedText("hot"), V.LocalizedText), ua.Variant(700, V.UInt16),
        ua.Variant(True, V.Boolean), ua.Variant(81.5, V.Double),
        ua.Variant(node_id("Alarm", 2), V.NodeId)])
    ev = plant_event(entry)
    assert ev is not None and ev.emitting_node == node_id("Boiler", 2)
    # an IT client's clauses: a nested path, a custom field (its namespace), the
    # ConditionId, and one the plant did not send
    got = ev.to_event_fields([clause([(0, "ActiveState"), (0, "Id")]), clause([(0, "Severity")]),
                              clause([(2, "Temperature")]), clause([], A.NodeId),
                              clause([(0, "Message")]), clause([(0, "AckedState"), (0, "Id")])])
    assert [v.Value for v in got] == [True, 700, 81.5, node_id("Alarm", 2),
                                      ua.LocalizedText("hot"), None]
    assert got[1].VariantType == V.UInt16
    # asyncua keeps the last state of a retained condition by these two attributes
    assert ev.NodeId == node_id("Alarm", 2) and not hasattr(ev, "Retain")


def test_mirror_event_of_a_bad_entry_is_none() -> None:
    assert plant_event(("not a node id", "i=2041", ())) is None
    ev = plant_event(("i=2253", "i=2041", (("Message", b"\xff"),)))  # undecodable: left out
    assert ev is not None and not hasattr(ev, "Message")


# -- event items and model-change items in one subscription ---------------------------


def test_events_routed_by_client_handle() -> None:
    carried: list[tuple[str, tuple[str, ...], list[ua.Variant]]] = []
    model_changes: list[int] = []
    counters: dict[str, int] = {}
    mon = Monitoring(None, _Cfg(), _Limits(), None, iter(range(10)), counters,  # type: ignore[arg-type]
                     lambda items: None, lambda: model_changes.append(1), lambda s: None,
                     lambda n, names, f: carried.append((n, names, f)))
    mon.event_of[7] = ("ns=2;s=Boiler", ("Message",))
    fields = [ua.Variant("x")]
    mon._events([ua.EventFieldList(ClientHandle=7, EventFields=fields)])  # type: ignore[arg-type]
    assert carried == [("ns=2;s=Boiler", ("Message",), fields)] and not model_changes
    mon._events([ua.EventFieldList(ClientHandle=201, EventFields=[])])  # type: ignore[arg-type]
    assert model_changes == [1] and len(carried) == 1


class _Cfg:
    items_per_subscription = 100
    trigger = "StatusValue"
    label = "test"


class _Limits:
    per_subscription = 0
    monitored = 100
