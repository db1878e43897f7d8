"""A lean attribute store for the nodes of asyncua's address space.

asyncua keeps every attribute of every node as an `AttributeValue` holding its
own `DataValue`, `Variant` and `StatusCode`, and an empty dict for subscribers:
about 8 KB per node, most of it the same few values (WriteMask 0, AccessLevel
CurrentRead, ValueRank -1, ...) over and over. Here a node's attributes are a
`LeanAttributes` mapping over two parts:

- a *shape*: one dict, shared by every node with the same static attributes,
  from attribute id to one shared DataValue;
- the node's *own* attributes (`LeanAttribute`, slotted, the subscribers' dict
  made only when somebody subscribes): its id, names and value, and any shared
  attribute that was written or subscribed to, which then becomes its own.

asyncua reads an attribute as `attributes[attr].value` and writes or subscribes
through the same object, so a shared attribute is handed out as a `_SharedView`
that reads the shape and turns into an own attribute at its first write or
subscription. A DataValue in a shape is never changed in place: asyncua and the
mirror replace `.value`, they never mutate it. Nothing here changes what a
client sees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

from asyncua import ua

_SIMPLE = (int, bool, float, str, bytes, type(None))


GOOD = ua.StatusCode()  # one for all the DataValues made here: none is changed in place


class LeanAttribute:
    """One attribute a node owns: the fields of asyncua's AttributeValue, slotted. Made
    from a bare Variant (a name, the node id: read seldom, never stamped), it keeps only
    that and gives a DataValue of it at each read."""

    __slots__ = ("_value", "value_callback", "value_setter", "_callbacks")

    def __init__(self, value: ua.DataValue | ua.Variant | None) -> None:
        self._value = value
        self.value_callback: Callable[..., ua.DataValue] | None = None
        self.value_setter: Callable[..., None] | None = None
        self._callbacks: dict[int, Callable[..., Any]] | None = None

    @property
    def value(self) -> ua.DataValue | None:
        v = self._value
        if v.__class__ is ua.Variant:
            return ua.DataValue(v, StatusCode=GOOD)
        return v  # type: ignore[return-value]

    @value.setter
    def value(self, dv: ua.DataValue | None) -> None:
        self._value = dv

    @property
    def datachange_callbacks(self) -> dict[int, Callable[..., Any]]:
        if self._callbacks is None:
            self._callbacks = {}
        return self._callbacks

    def __repr__(self) -> str:
        return f"LeanAttribute({self.value})"


class _SharedView:
    """A node's shared attribute: reads the shape until written or subscribed to."""

    __slots__ = ("_attrs", "_attr")

    def __init__(self, attrs: LeanAttributes, attr: int) -> None:
        self._attrs, self._attr = attrs, attr

    def _mine(self) -> LeanAttribute:
        own = self._attrs.own
        mine = own.get(self._attr)
        if mine is None:
            mine = own[self._attr] = LeanAttribute(self._attrs.shape[self._attr])
        return mine

    @property
    def value(self) -> ua.DataValue | None:
        mine = self._attrs.own.get(self._attr)
        return mine.value if mine is not None else self._attrs.shape[self._attr]

    @value.setter
    def value(self, dv: ua.DataValue | None) -> None:
        self._mine().value = dv

    @property
    def value_callback(self) -> Callable[..., ua.DataValue] | None:
        mine = self._attrs.own.get(self._attr)
        return mine.value_callback if mine is not None else None

    @value_callback.setter
    def value_callback(self, cb: Callable[..., ua.DataValue] | None) -> None:
        self._mine().value_callback = cb

    @property
    def value_setter(self) -> Callable[..., None] | None:
        mine = self._attrs.own.get(self._attr)
        return mine.value_setter if mine is not None else None

    @value_setter.setter
    def value_setter(self, setter: Callable[..., None] | None) -> None:
        self._mine().value_setter = setter

    @property
    def datachange_callbacks(self) -> dict[int, Callable[..., Any]]:
        return self._mine().datachange_callbacks


class LeanAttributes(MutableMapping[Any, Any]):
    """A node's attributes: its own ones over a shape shared with its like."""

    __slots__ = ("shape", "own")

    def __init__(self, shape: dict[int, ua.DataValue], own: dict[int, Any]) -> None:
        self.shape = shape
        self.own = own

    def __getitem__(self, attr: int) -> Any:
        mine = self.own.get(attr)
        if mine is not None:
            return mine
        if attr in self.shape:
            return _SharedView(self, attr)
        raise KeyError(attr)

    def __setitem__(self, attr: int, value: Any) -> None:
        self.own[attr] = value

    def __delitem__(self, attr: int) -> None:
        if attr in self.shape:   # a shape is shared: this node gets one of its own
            self.shape = {a: dv for a, dv in self.shape.items() if a != attr}
            self.own.pop(attr, None)
        else:
            del self.own[attr]

    def __contains__(self, attr: object) -> bool:
        return attr in self.own or attr in self.shape

    def __iter__(self) -> Iterator[Any]:
        yield from self.own
        yield from (a for a in self.shape if a not in self.own)

    def __len__(self) -> int:
        return len(self.own) + sum(1 for a in self.shape if a not in self.own)

    def __repr__(self) -> str:
        return f"LeanAttributes({dict(self.items())})"


def _key(dv: ua.DataValue) -> tuple[Any, ...] | None:
    """What makes two static DataValues the same, or None for one never shared."""
    if dv.SourceTimestamp is not None or dv.ServerTimestamp is not None \
            or dv.SourcePicoseconds or dv.ServerPicoseconds:
        return None
    sc = dv.StatusCode
    if sc is not None and sc.value != 0:
        return None
    v = dv.Value
    if v is None:
        return (None, sc is None)
    val = v.Value
    cls = val.__class__
    if cls is float:
        k: Any = val.hex()   # -0.0 == 0.0, yet they encode apart
    elif cls in _SIMPLE or isinstance(val, ua.NodeId):
        k = val
    elif cls is ua.LocalizedText:
        k = (val.Locale, val.Text)
    elif cls is ua.QualifiedName:
        k = (val.NamespaceIndex, val.Name)
    elif cls is list and all(x.__class__ in _SIMPLE and x.__class__ is not float for x in val):
        k = tuple(val)
    else:
        return None
    dims = tuple(v.Dimensions) if v.Dimensions else None
    return (v.VariantType, cls, k, dims, v.is_array, sc is None)


class Shapes:
    """Shares the static attribute values of nodes, and the shapes they make."""

    def __init__(self) -> None:
        self._values: dict[tuple[Any, ...], ua.DataValue] = {}
        self._shapes: dict[tuple[tuple[int, int], ...], dict[int, ua.DataValue]] = {}

    def intern(self, dv: ua.DataValue) -> ua.DataValue:
        """An equal DataValue shared with every other holder, where that is safe."""
        key = _key(dv)
        return dv if key is None else self._values.setdefault(key, dv)

    def attributes(self, shared: dict[int, ua.DataValue], own: dict[int, Any]) -> LeanAttributes:
        """A node's attributes: `shared` maps to interned values, `own` to LeanAttributes."""
        # the values are interned, so their ids name them while the shape holds them
        key = tuple(sorted((attr, id(dv)) for attr, dv in shared.items()))
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = shared
        return LeanAttributes(shape, own)

    def compact(self, nd: Any, own: frozenset[int]) -> None:
        """Give a node asyncua built (the standard address space) lean attributes."""
        if isinstance(nd.attributes, LeanAttributes):
            return
        shared: dict[int, ua.DataValue] = {}
        mine: dict[int, Any] = {}
        for attr, av in nd.attributes.items():
            dv = av.value
            if attr in own or av.value_callback is not None or av.value_setter is not None \
                    or av.datachange_callbacks or dv is None or _key(dv) is None:
                lean = mine[attr] = LeanAttribute(dv)
                lean.value_callback, lean.value_setter = av.value_callback, av.value_setter
                if av.datachange_callbacks:
                    lean.datachange_callbacks.update(av.datachange_callbacks)
            else:
                shared[attr] = self.intern(dv)
        nd.attributes = self.attributes(shared, mine)

    def stats(self) -> dict[str, int]:
        return {"shapes": len(self._shapes), "shared_values": len(self._values)}
