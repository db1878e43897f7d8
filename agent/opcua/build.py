"""Turn `NodeRecord`s into nodes of an asyncua server's address space, and back out.

Works on the server's in-process address space (`server.iserver`), as the
server itself: AddNodes through the internal node-management service (Admin
inside the process; clients never get that), references added in both
directions, deletions that only touch the neighbours of the deleted node
(asyncua's own DeleteTargetReferences scans the whole address space per node).

Everything built here is read-only: variables keep only CurrentRead in
AccessLevel/UserAccessLevel, WriteMask and UserWriteMask are 0, methods are not
executable and get no callback. No object claims to notify (EventNotifier 0):
agent/opcua/mirror_events.py sets SubscribeToEvents where TX carries events.
A variable the mirror keeps a history of (`historized`) also has HistoryRead in
its access levels and Historizing true; every other has neither, so a client
sees before asking which nodes answer a HistoryRead (agent/opcua/history_read.py).

Values are written with `set_value`, straight into the attribute and through
its data-change callbacks (the subscriptions of IT clients). This skips
asyncua's write-path type check, which refuses a value whose Variant type
differs from the first one seen (so a BaseDataType variable could never
change type) and which silently nulls the value of any Bad status.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Container, Iterable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.server.address_space import AttributeValue, NodeData
from asyncua.server.internal_server import InternalServer
from asyncua.ua.ua_binary import variant_from_binary

from agent.opcua.diff import Relink
from agent.opcua.lean import GOOD, LeanAttribute, Shapes
from agent.opcua.model import NodeRecord
from agent.opcua.ua import data_value, node_id, status

log = logging.getLogger("diode.sink.opcua")

A = ua.AttributeIds
NC = ua.NodeClass
_O = ua.ObjectIds
OBJECTS = node_id(_O.ObjectsFolder)
ORGANIZES = node_id(_O.Organizes)
HAS_TYPE_DEFINITION = node_id(_O.HasTypeDefinition)
READ_ONLY_ACCESS = ua.AccessLevel.CurrentRead.mask
HISTORY_ACCESS = READ_ONLY_ACCESS | ua.AccessLevel.HistoryRead.mask
YIELD_EVERY = 200  # nodes between two yields to the event loop
DEFAULT_TYPE = {NC.Object: node_id(_O.BaseObjectType),
                NC.Variable: node_id(_O.BaseDataVariableType)}

_ATTR_CLASS: dict[int, Any] = {
    NC.Object: ua.ObjectAttributes, NC.Variable: ua.VariableAttributes,
    NC.Method: ua.MethodAttributes, NC.ObjectType: ua.ObjectTypeAttributes,
    NC.VariableType: ua.VariableTypeAttributes, NC.ReferenceType: ua.ReferenceTypeAttributes,
    NC.DataType: ua.DataTypeAttributes, NC.View: ua.ViewAttributes,
}


def decode_variant(data: bytes) -> ua.Variant:
    return variant_from_binary(Buffer(data))


def nid(s: str) -> ua.NodeId:
    return ua.NodeId.from_string(s)


def now_utc() -> datetime:
    return datetime.now(UTC)


def read_only_attr(attr: int, value: Any, historized: bool = False) -> Any:
    """The mirror's version of one attribute value."""
    if attr in (A.AccessLevel, A.UserAccessLevel):
        history = ua.AccessLevel.HistoryRead.mask if historized else 0
        return ua.Variant(int(value or 0) & READ_ONLY_ACCESS | history, ua.VariantType.Byte)
    if attr == A.Historizing:
        return ua.Variant(historized, ua.VariantType.Boolean)
    if attr in (A.Executable, A.UserExecutable):
        return ua.Variant(False, ua.VariantType.Boolean)
    if attr in (A.WriteMask, A.UserWriteMask):
        return ua.Variant(0, ua.VariantType.UInt32)
    if attr == A.EventNotifier:  # only where events are carried: agent/opcua/mirror_events.py
        return ua.Variant(0, ua.VariantType.Byte)
    return None


def decode_attrs(rec: NodeRecord) -> dict[int, ua.Variant]:
    out: dict[int, ua.Variant] = {}
    for attr, data in rec.attrs.items():
        try:
            out[attr] = decode_variant(data)
        except Exception:  # a variant we cannot decode: leave the attribute out
            log.debug("node %s: attribute %d does not decode", rec.node_id, attr)
    return out


# The attribute ids each node class has (those of its AddNodes attributes structure).
_ALLOWED: dict[int, frozenset[int]] = {
    ncls: frozenset(getattr(A, f.name) for f in fields(cls) if hasattr(A, f.name))
    for ncls, cls in _ATTR_CLASS.items()}
# asyncua's types for the attributes it builds (NodeManagementService._add_nodeattributes)
_VTYPE: dict[int, ua.VariantType] = {
    A.AccessLevel: ua.VariantType.Byte, A.ArrayDimensions: ua.VariantType.UInt32,
    A.ContainsNoLoops: ua.VariantType.Boolean, A.DataType: ua.VariantType.NodeId,
    A.Description: ua.VariantType.LocalizedText, A.DisplayName: ua.VariantType.LocalizedText,
    A.EventNotifier: ua.VariantType.Byte, A.Executable: ua.VariantType.Boolean,
    A.Historizing: ua.VariantType.Boolean, A.InverseName: ua.VariantType.LocalizedText,
    A.IsAbstract: ua.VariantType.Boolean, A.MinimumSamplingInterval: ua.VariantType.Double,
    A.Symmetric: ua.VariantType.Boolean, A.UserAccessLevel: ua.VariantType.Byte,
    A.UserExecutable: ua.VariantType.Boolean, A.ValueRank: ua.VariantType.Int32,
    A.WriteMask: ua.VariantType.UInt32, A.UserWriteMask: ua.VariantType.UInt32,
    A.DataTypeDefinition: ua.VariantType.ExtensionObject,
}
# Attributes the mirror always says, whatever the source gave (read_only_attr).
_DEFAULTS: dict[int, tuple[int, ...]] = {
    ncls: (A.WriteMask, A.UserWriteMask) for ncls in _ATTR_CLASS}
_DEFAULTS[NC.Variable] = (A.WriteMask, A.UserWriteMask, A.AccessLevel, A.UserAccessLevel)
# What a node owns rather than shares with its like (lean.py): its id, names and value.
OWN = frozenset((A.NodeId, A.BrowseName, A.DisplayName, A.Value))
_NULL_ID = ua.NodeId()
_NULL_VARIANT = ua.Variant()  # never changed: a value is replaced whole (set_value)
_NAME_TYPE: dict[int, ua.VariantType] = {A.BrowseName: ua.VariantType.QualifiedName,
              A.DisplayName: ua.VariantType.LocalizedText}
_INT32, _INT16 = struct.Struct("<i"), struct.Struct("<h")


def _string(data: bytes, pos: int) -> tuple[str | None, int]:
    """An OPC UA binary String at `pos`: its text (None when null) and where it ends."""
    (size,) = _INT32.unpack_from(data, pos)
    pos += 4
    if size == -1:
        return None, pos
    if size < 0:
        raise ValueError("a negative length")
    if pos + size > len(data):
        raise ValueError("string runs past the end")
    return data[pos:pos + size].decode(errors="surrogateescape"), pos + size  # as asyncua


def decode_name(data: bytes) -> ua.Variant:
    """A BrowseName or DisplayName from its Variant bytes: the common shapes read
    directly, for asyncua's generic decoder took a third of a big install."""
    try:
        if data[:1] == b"\x14":   # a QualifiedName: namespace index, name
            (ns,) = _INT16.unpack_from(data, 1)  # asyncua's type for it
            name, end = _string(data, 3)
            if end == len(data):
                return ua.Variant(ua.QualifiedName(name, ns), ua.VariantType.QualifiedName)
        elif data[:1] == b"\x15" and len(data) > 1 and not data[1] & ~3:  # a LocalizedText
            pos, locale, text = 2, None, None
            if data[1] & 1:
                locale, pos = _string(data, pos)
            if data[1] & 2:
                text, pos = _string(data, pos)
            if pos == len(data):
                return ua.Variant(ua.LocalizedText(text, locale), ua.VariantType.LocalizedText)
    except (struct.error, ValueError):   # not what it looked like: the generic decoder says
        pass
    return decode_variant(data)


def _typed(attr: int, value: Any) -> ua.Variant:
    """An attribute's value in the type asyncua gives that attribute."""
    if attr == A.DataTypeDefinition and not isinstance(value, ua.DataTypeDefinition):
        return ua.Variant(None, ua.VariantType.Null)
    vtype = _VTYPE.get(attr)
    if vtype is None:
        return ua.Variant(value)
    return ua.Variant(value, vtype, is_array=attr == A.ArrayDimensions)


@dataclass(frozen=True, slots=True)
class _Target:
    """What a reference to a node says of it (asyncua's ReferenceDescription fields)."""
    node_id: ua.NodeId
    node_class: int
    browse_name: ua.QualifiedName
    display_name: ua.LocalizedText
    type_def: ua.NodeId

    def ref(self, rtype: ua.NodeId, forward: bool) -> ua.ReferenceDescription:
        return ua.ReferenceDescription(ReferenceTypeId=rtype, IsForward=forward,
                                       NodeId=self.node_id, BrowseName=self.browse_name,
                                       DisplayName=self.display_name,
                                       NodeClass=self.node_class, TypeDefinition=self.type_def)


def _target(aspace: Any, n: ua.NodeId) -> _Target | None:
    nd = aspace.get(n)
    if nd is None:
        return None
    attrs = nd.attributes

    def value(attr: int, default: Any) -> Any:
        av = attrs.get(attr)
        dv = av.value if av is not None else None
        return dv.Value.Value if dv is not None and dv.Value is not None else default

    ncls = NC(value(A.NodeClass, NC.Unspecified))
    tdef = _NULL_ID
    if ncls in (NC.Object, NC.Variable):
        tdef = next((r.NodeId for r in nd.references
                     if r.IsForward and r.ReferenceTypeId == HAS_TYPE_DEFINITION), _NULL_ID)
    return _Target(n, ncls, value(A.BrowseName, ua.QualifiedName()),
                   value(A.DisplayName, ua.LocalizedText()), tdef)


@dataclass
class Builder:
    """Adds, updates and deletes mirrored nodes on one server's address space."""

    iserver: InternalServer
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("nodes_added", "nodes_deleted", "nodes_updated", "nodes_skipped", "refs_skipped"), 0))
    shapes: Shapes = field(default_factory=Shapes)
    # (attribute, its bytes on the link, historized) -> the shared DataValue
    _statics: dict[tuple[int, Any, bool], ua.DataValue] = field(default_factory=dict)

    @property
    def aspace(self) -> Any:
        return self.iserver.aspace

    def compact_standard(self) -> None:
        """The standard nodes in memory, in lean attributes too (lean.py): all of them
        when asyncua built the space in memory (a third of its 51 MB), else the few read
        from the store so far (standard_space.py)."""
        aspace = self.aspace
        for n in list(aspace.keys()):
            self.shapes.compact(aspace[n], OWN)

    async def add(self, recs: list[NodeRecord], historized: frozenset[str] = frozenset()
                  ) -> list[NodeRecord]:
        """Add nodes in order (parents first); returns those added. Yields to the
        loop every few hundred nodes, so the link receiver keeps reading meanwhile, and
        a client can browse what is in already."""
        added = []
        targets: dict[ua.NodeId, _Target | None] = {}  # parents and types, met again and again
        shared: dict[tuple[ua.NodeId, ua.NodeId], ua.ReferenceDescription] = {}
        ids: dict[str, ua.NodeId] = {}  # parents, reference types, types: parsed once
        stamp = now_utc()
        for i, rec in enumerate(recs):
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
                stamp = now_utc()
            if self._add(rec, rec.node_id in historized, targets, shared, ids, stamp):
                added.append(rec)
                self.counters["nodes_added"] += 1
            else:
                self.counters["nodes_skipped"] += 1
        return added

    def _add(self, rec: NodeRecord, historized: bool, targets: dict[ua.NodeId, _Target | None],
             refs: dict[tuple[ua.NodeId, ua.NodeId], ua.ReferenceDescription],
             ids: dict[str, ua.NodeId], stamp: datetime) -> bool:
        """One node, read-only, with its references to and from its parent and its type:
        what asyncua's AddNodes makes, built straight into the address space. A reference
        to the parent or the type is one object for all the nodes it is the same for
        (`refs`): asyncua only ever replaces references, or renames all of them at once."""
        aspace = self.aspace
        ncls = NC(rec.node_class)
        allowed = _ALLOWED.get(ncls)
        n = nid(rec.node_id)
        if allowed is None or n in aspace:
            return False
        def shared_id(text: str) -> ua.NodeId:
            found = ids.get(text)
            if found is None:
                found = ids[text] = nid(text)
            return found
        parent = shared_id(rec.parent) if rec.parent else None
        if parent is not None and parent in aspace:
            rtype = shared_id(rec.parent_ref) if rec.parent_ref else ORGANIZES
        elif ncls in (NC.Object, NC.Variable, NC.View):
            parent, rtype = OBJECTS, ORGANIZES  # its parent is not mirrored: hang it from Objects
        else:
            return False
        tdef = None
        if ncls in DEFAULT_TYPE:
            tdef = shared_id(rec.type_def) if rec.type_def else None
            if tdef is None or tdef not in aspace:
                tdef = DEFAULT_TYPE[ncls]
        own: dict[int, Any] = {}
        shared: dict[int, ua.DataValue] = {}
        for attr, data in rec.attrs.items():
            if attr not in allowed and attr != A.BrowseName:
                continue
            if attr in OWN:
                try:
                    variant = decode_variant(data) if attr == A.Value else decode_name(data)
                except Exception:  # a variant we cannot decode: leave the attribute out
                    continue
                if attr == A.Value:
                    own[attr] = LeanAttribute(data_value(variant, GOOD, stamp))
                elif variant.VariantType == _NAME_TYPE[attr]:  # decode_name's, as it is
                    own[attr] = LeanAttribute(variant)
                else:
                    own[attr] = LeanAttribute(_typed(attr, variant.Value))
            else:
                dv = self._static(attr, data, historized)
                if dv is not None:
                    shared[attr] = dv
        for attr in _DEFAULTS.get(ncls, ()):
            if attr not in shared:
                shared[attr] = self._default(attr, historized)
        if ncls == NC.Variable:
            shared[A.Historizing] = self._default(A.Historizing, historized)
            if A.Value not in own:
                own[A.Value] = LeanAttribute(data_value(_NULL_VARIANT, GOOD, stamp))
        if ncls == NC.Method:
            shared[A.Executable] = shared[A.UserExecutable] = self._default(A.Executable, False)
        shared[A.NodeClass] = self._static(A.NodeClass, ncls, False)  # type: ignore[assignment]
        bn = own.get(A.BrowseName)
        name = bn.value.Value.Value if bn is not None else None
        if not isinstance(name, ua.QualifiedName):
            name = ua.QualifiedName(rec.node_id)
            own[A.BrowseName] = LeanAttribute(ua.Variant(name, ua.VariantType.QualifiedName))
        if A.DisplayName not in own:
            own[A.DisplayName] = LeanAttribute(
                ua.Variant(ua.LocalizedText(name.Name), ua.VariantType.LocalizedText))
        own[A.NodeId] = LeanAttribute(ua.Variant(n, ua.VariantType.NodeId))
        nd = NodeData(n)
        nd.attributes = self.shapes.attributes(shared, own)  # type: ignore[assignment]
        aspace[n] = nd
        me = _Target(n, ncls, name, own[A.DisplayName].value.Value.Value, tdef or _NULL_ID)
        up = targets[parent] if parent in targets else targets.setdefault(
            parent, _target(aspace, parent))
        if up is not None:
            aspace[parent].references.append(me.ref(rtype, True))  # a new node: never there
            back = refs.get((parent, rtype))
            if back is None:
                back = refs[(parent, rtype)] = up.ref(rtype, False)
            nd.references.append(back)
        if tdef is not None:
            kind = targets[tdef] if tdef in targets else targets.setdefault(
                tdef, _target(aspace, tdef))
            if kind is not None:
                typed = refs.get((tdef, HAS_TYPE_DEFINITION))
                if typed is None:
                    typed = refs[(tdef, HAS_TYPE_DEFINITION)] = kind.ref(HAS_TYPE_DEFINITION, True)
                nd.references.append(typed)
        return True

    def _static(self, attr: int, data: Any, historized: bool) -> ua.DataValue | None:
        """The shared DataValue of a static attribute, from its bytes on the link (or
        the node class), decoded once for all the nodes that have the same."""
        key = (attr, data, historized)
        dv = self._statics.get(key)
        if dv is None:
            if attr == A.NodeClass:
                variant = ua.Variant(data, ua.VariantType.Int32)
            else:
                try:
                    value = decode_variant(data).Value
                except Exception:  # a variant we cannot decode: leave the attribute out
                    log.debug("attribute %d does not decode", attr)
                    return None
                variant = read_only_attr(attr, value, historized) or _typed(attr, value)
            dv = self._statics[key] = self.shapes.intern(ua.DataValue(variant, StatusCode=GOOD))
        return dv

    def _default(self, attr: int, historized: bool) -> ua.DataValue:
        """WriteMask 0, read-only access levels, Historizing: what the mirror says."""
        key = (attr, None, historized)
        dv = self._statics.get(key)
        if dv is None:
            value = HISTORY_ACCESS if historized else READ_ONLY_ACCESS
            dv = self._statics[key] = self.shapes.intern(ua.DataValue(
                read_only_attr(attr, value, historized), StatusCode=GOOD))
        return dv

    def add_refs(self, source: str, refs: Iterable[tuple[str, str]], mirrored: Container[str]
                 ) -> None:
        """Forward references from `source`; the inverse too when the target is mirrored
        (standard nodes are left as they are)."""
        aspace = self.aspace
        src = nid(source)
        items = []
        for rtype, target in refs:
            t = nid(target)
            if t not in aspace or nid(rtype) not in aspace:
                self.counters["refs_skipped"] += 1
                continue
            items.append(_ref_item(src, nid(rtype), t, True))
            if target in mirrored:
                items.append(_ref_item(t, nid(rtype), src, False))
        if items:
            self.iserver.node_mgt_service.add_references(items)

    def remove_refs(self, source: str, refs: Iterable[tuple[str, str]]) -> None:
        aspace = self.aspace
        src = nid(source)
        for rtype, target in refs:
            r, t = nid(rtype), nid(target)
            for a, b, fwd in ((src, t, True), (t, src, False)):
                nd = aspace.get(a)
                if nd is not None:
                    nd.references = [x for x in nd.references
                                     if not (x.NodeId == b and x.ReferenceTypeId == r
                                             and x.IsForward == fwd)]

    async def delete(self, node_ids: Iterable[str]) -> None:
        """Delete nodes: subscribers see BadNodeIdUnknown, neighbours lose their references."""
        aspace = self.aspace
        gone = ua.DataValue(ua.Variant(), StatusCode=status(ua.StatusCodes.BadNodeIdUnknown))
        for i, s in enumerate(node_ids):
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
            n = nid(s)
            nd: NodeData | None = aspace.get(n)
            if nd is None:
                continue
            av = nd.attributes.get(A.Value)
            if av is not None and av.datachange_callbacks:
                await set_value(av, gone)
                for handle in list(av.datachange_callbacks):
                    aspace.delete_datachange_callback(handle)
            for ref in nd.references:
                other = aspace.get(ref.NodeId)
                if other is not None and other is not nd:
                    other.references = [x for x in other.references if x.NodeId != n]
            del aspace[n]
            self.counters["nodes_deleted"] += 1

    def set_historized(self, node_id: str, historized: bool) -> None:
        """Say in a variable's attributes whether the mirror keeps its history."""
        nd = self.aspace.get(nid(node_id))
        if nd is None:
            return
        for attr in (A.AccessLevel, A.UserAccessLevel, A.Historizing):
            av = nd.attributes.get(attr)
            old = av.value.Value.Value if av is not None and av.value and av.value.Value \
                else READ_ONLY_ACCESS
            nd.attributes[attr] = AttributeValue(ua.DataValue(
                read_only_attr(attr, old, historized)))

    async def update(self, old: NodeRecord, new: NodeRecord, mirrored: set[str],
                     historized: bool = False) -> None:
        """Apply attribute, type and reference changes in place (subscriptions survive)."""
        aspace = self.aspace
        n = nid(new.node_id)
        nd = aspace.get(n)
        if nd is None:
            return
        self.counters["nodes_updated"] += 1
        for attr, data in new.attrs.items():
            if old.attrs.get(attr) == data or attr in (A.NodeClass, A.NodeId):
                continue
            try:
                variant = decode_variant(data)
            except Exception:  # undecodable: keep the old attribute
                continue
            fixed = read_only_attr(attr, variant.Value, historized)
            dv = ua.DataValue(fixed if fixed is not None else variant)
            if attr in (A.BrowseName, A.DisplayName) and attr in nd.attributes:
                await aspace.write_attribute_value(n, A(attr), dv)  # syncs reference names
            elif attr in nd.attributes:  # in place: items monitoring the attribute see it
                await set_value(nd.attributes[A(attr)], dv)
            else:
                nd.attributes[A(attr)] = AttributeValue(dv)
        if old.type_def != new.type_def:
            if old.type_def:
                self.remove_refs(new.node_id, [(HAS_TYPE_DEFINITION.to_string(), old.type_def)])
            if new.type_def:
                self.add_refs(new.node_id, [(HAS_TYPE_DEFINITION.to_string(), new.type_def)], set())
        if (old.parent, old.parent_ref) != (new.parent, new.parent_ref):
            if old.parent and old.parent_ref:
                self.remove_refs(old.parent, [(old.parent_ref, old.node_id)])
            if new.parent and new.parent_ref:
                self.add_refs(new.parent, [(new.parent_ref, new.node_id)], mirrored)
        old_refs, new_refs = set(old.refs), set(new.refs)
        if old_refs != new_refs:
            self.remove_refs(new.node_id, old_refs - new_refs)
            self.add_refs(new.node_id, [r for r in new.refs if r not in old_refs], mirrored)

    def relink(self, link: Relink, mirrored: set[str]) -> None:
        """Add again a kept node's references to or from nodes just added (agent/opcua/
        diff.py): removed first where one survived, so none is there twice."""
        if link.parent is not None:
            parent, rtype = link.parent
            self.remove_refs(parent, [(rtype, link.node_id)])
            self.add_refs(parent, [(rtype, link.node_id)], mirrored)
        if link.refs:
            self.remove_refs(link.node_id, link.refs)
            self.add_refs(link.node_id, link.refs, mirrored)
        if link.type_def is not None:
            ref = [(HAS_TYPE_DEFINITION.to_string(), link.type_def)]
            self.remove_refs(link.node_id, ref)
            self.add_refs(link.node_id, ref, set())  # as AddNodes makes it: forward only


def _ref_item(source: ua.NodeId, rtype: ua.NodeId, target: ua.NodeId,
              forward: bool) -> ua.AddReferencesItem:
    item = ua.AddReferencesItem()
    item.SourceNodeId = source
    item.ReferenceTypeId = rtype
    item.TargetNodeId = target
    item.IsForward = forward
    item.TargetNodeClass = NC.Unspecified
    return item


async def set_value(av: AttributeValue, dv: ua.DataValue) -> None:
    """Write a DataValue as it is and notify the attribute's subscribers."""
    av.value = dv
    av.value_callback = None
    if av.datachange_callbacks:
        for handle, callback in list(av.datachange_callbacks.items()):
            try:
                await callback(handle, dv)
            except Exception:  # one broken subscriber must not stop the mirror
                log.exception("data change callback failed")
