"""The lean attribute store: shared shapes that no node's write or subscription leaks from."""

from __future__ import annotations

import pytest
from asyncua import ua
from asyncua.server.address_space import AttributeValue, NodeData

from agent.opcua.lean import LeanAttribute, LeanAttributes, Shapes

A = ua.AttributeIds


def dv(value: object, vtype: ua.VariantType | None = None) -> ua.DataValue:
    return ua.DataValue(ua.Variant(value, vtype))


def two_alike(shapes: Shapes) -> tuple[LeanAttributes, LeanAttributes]:
    def make(name: str) -> LeanAttributes:
        shared = {A.WriteMask: shapes.intern(dv(0, ua.VariantType.UInt32)),
                  A.ValueRank: shapes.intern(dv(-1, ua.VariantType.Int32))}
        return shapes.attributes(shared, {A.DisplayName: LeanAttribute(dv(ua.LocalizedText(name)))})
    return make("a"), make("b")


def test_nodes_alike_share_one_shape_and_read_their_own_names() -> None:
    shapes = Shapes()
    a, b = two_alike(shapes)
    assert a.shape is b.shape
    assert shapes.stats() == {"shapes": 1, "shared_values": 2}
    assert a[A.WriteMask].value.Value == ua.Variant(0, ua.VariantType.UInt32)
    assert a[A.DisplayName].value.Value.Value.Text == "a"
    assert b[A.DisplayName].value.Value.Value.Text == "b"
    assert set(a) == {A.WriteMask, A.ValueRank, A.DisplayName} and len(a) == 3
    assert A.ValueRank in a and A.Value not in a
    with pytest.raises(KeyError):
        a[A.Value]
    assert a.get(A.Value) is None


def test_a_write_to_a_shared_attribute_changes_that_node_only() -> None:
    a, b = two_alike(Shapes())
    view = a[A.WriteMask]
    view.value = dv(5, ua.VariantType.UInt32)
    assert a[A.WriteMask].value.Value.Value == 5
    assert view.value.Value.Value == 5   # a view taken before the write sees it too
    assert b[A.WriteMask].value.Value.Value == 0
    assert a.shape is b.shape            # the shape itself never changes
    assert len(a) == 3                   # own now, counted once


def test_a_subscription_to_a_shared_attribute_is_that_nodes_alone() -> None:
    a, b = two_alike(Shapes())
    a[A.ValueRank].datachange_callbacks[7] = print
    assert A.ValueRank not in b.own      # reading b's does not make it one of its own
    assert b[A.ValueRank].value is a.shape[A.ValueRank]
    assert isinstance(a.own[A.ValueRank], LeanAttribute)
    assert a[A.ValueRank].datachange_callbacks == {7: print}
    assert not b[A.ValueRank].datachange_callbacks


def test_a_value_callback_on_a_shared_attribute_is_that_nodes_alone() -> None:
    a, b = two_alike(Shapes())
    a[A.WriteMask].value_callback = lambda *args: dv(9)
    assert a[A.WriteMask].value_callback is not None
    assert b[A.WriteMask].value_callback is None


def test_deleting_a_shared_attribute_leaves_the_others_alone() -> None:
    a, b = two_alike(Shapes())
    del a[A.WriteMask]
    assert A.WriteMask not in a and A.WriteMask in b
    del a[A.DisplayName]
    assert set(a) == {A.ValueRank}


@pytest.mark.parametrize(("one", "other"), [
    (dv(0.0), dv(-0.0)),                                          # encode apart
    (dv(True), dv(1)),                                            # bool is not int
    (dv(1, ua.VariantType.Byte), dv(1, ua.VariantType.UInt32)),   # nor one type another
    (dv([1, 2], ua.VariantType.UInt32), dv([1, 3], ua.VariantType.UInt32)),
])
def test_only_equal_values_are_shared(one: ua.DataValue, other: ua.DataValue) -> None:
    shapes = Shapes()
    assert shapes.intern(one) is not shapes.intern(other)
    assert shapes.intern(dv(one.Value.Value, one.Value.VariantType)) is shapes.intern(one)


def test_values_with_a_time_or_a_status_are_never_shared() -> None:
    shapes = Shapes()
    stamped = ua.DataValue(ua.Variant(1), SourceTimestamp=ua.get_win_epoch())
    bad = ua.DataValue(ua.Variant(1), StatusCode=ua.StatusCode(ua.StatusCodes.BadNoData))
    for x in (stamped, bad):
        assert shapes.intern(x) is x
        assert shapes.intern(ua.DataValue(x.Value, x.StatusCode, x.SourceTimestamp)) \
            is not x


def test_compacting_an_asyncua_node_keeps_every_value_callback_and_subscriber() -> None:
    nd = NodeData(ua.NodeId(5))
    nd.attributes = {A.NodeId: AttributeValue(dv(ua.NodeId(5), ua.VariantType.NodeId)),
                     A.WriteMask: AttributeValue(dv(0, ua.VariantType.UInt32)),
                     A.Value: AttributeValue(dv(3.5))}
    nd.attributes[A.WriteMask].datachange_callbacks[1] = print
    before = {attr: av.value for attr, av in nd.attributes.items()}
    shapes = Shapes()
    shapes.compact(nd, frozenset((A.NodeId, A.Value)))
    assert isinstance(nd.attributes, LeanAttributes)
    assert {attr: nd.attributes[attr].value for attr in nd.attributes} == before
    assert nd.attributes[A.WriteMask].datachange_callbacks == {1: print}
    assert set(nd.attributes.own) == {A.NodeId, A.Value, A.WriteMask}  # the subscribed one too
    shapes.compact(nd, frozenset())   # twice is once
    assert set(nd.attributes.own) == {A.NodeId, A.Value, A.WriteMask}
