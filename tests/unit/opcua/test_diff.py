"""What a new model version changes on the mirror (agent/opcua/diff.py), and node ids
across two NamespaceArrays (agent/opcua/namespaces.py): pure functions, as tables."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.opcua.diff import ModelDiff, Relink, diff, same
from agent.opcua.model import NodeRecord
from agent.opcua.namespaces import Renumbering, join, split

UA = "http://opcfoundation.org/UA/"
BASE = (UA, "urn:src", "urn:plant")
APPENDED = (*BASE, "urn:extra")
INSERTED = (UA, "urn:src", "urn:new", "urn:plant")
BETWEEN = (*BASE, "urn:new", "urn:extra")  # inserted before urn:extra
HAS_COMPONENT, ORGANIZES, HAS_CAUSE = "i=47", "i=35", "i=53"
OBJECT, VARIABLE, OBJECT_TYPE, VIEW = 1, 2, 8, 128


def obj(nid: str, parent: str = "i=85", ref: str = ORGANIZES, *, cls: int = OBJECT,
        type_def: str | None = "i=61", refs: tuple[tuple[str, str], ...] = (),
        name: bytes = b"n") -> NodeRecord:
    return NodeRecord(nid, cls, parent, ref, type_def, {3: name}, refs)


def var(nid: str, parent: str, **kw: object) -> NodeRecord:
    return replace(obj(nid, parent, HAS_COMPONENT, type_def="i=63"), node_class=VARIABLE, **kw)  # type: ignore[arg-type]


F, X = obj("ns=2;s=F"), var("ns=2;s=F.X", "ns=2;s=F")
E = var("ns=3;s=E", "ns=2;s=F")
K = var("ns=2;s=K", "ns=2;s=F", refs=((HAS_CAUSE, "ns=2;s=F"),))

# (old records, old namespaces, new records, new namespaces, expected)
CASES = {
    "same model": ((F, X), BASE, (F, X), BASE, ModelDiff()),
    "appended namespace: no node id changes": (
        (F, X), BASE, (F, X, E), APPENDED, ModelDiff(added=(E,))),
    "namespace inserted before the plant's: its nodes get new ids": (
        (F, X), BASE, (obj("ns=3;s=F"), var("ns=3;s=F.X", "ns=3;s=F")), INSERTED,
        ModelDiff(removed=("ns=2;s=F.X", "ns=2;s=F"),
                  added=(obj("ns=3;s=F"), var("ns=3;s=F.X", "ns=3;s=F")))),
    "an old id string names another namespace's node: not the same node": (
        (F, E), APPENDED, (F, E, replace(E, node_id="ns=4;s=E")), BETWEEN,
        ModelDiff(removed=("ns=3;s=E",), added=(E, replace(E, node_id="ns=4;s=E")))),
    "a kept node's parent moved to another index: changed in place": (
        (obj("ns=3;s=P"), var("ns=2;s=C", "ns=3;s=P")), APPENDED,
        (obj("ns=4;s=P"), var("ns=2;s=C", "ns=4;s=P")), BETWEEN,
        ModelDiff(removed=("ns=3;s=P",), added=(obj("ns=4;s=P"),),
                  changed=((var("ns=2;s=C", "ns=3;s=P"), var("ns=2;s=C", "ns=4;s=P")),))),
    "a namespace gone: its nodes go": ((F, X, E), APPENDED, (F, X), BASE,
                                       ModelDiff(removed=("ns=3;s=E",))),
    "references reordered only: no change": (
        (replace(K, refs=((HAS_CAUSE, "ns=2;s=F"), (HAS_CAUSE, "ns=2;s=F.X"))),), BASE,
        (replace(K, refs=((HAS_CAUSE, "ns=2;s=F.X"), (HAS_CAUSE, "ns=2;s=F"))),), BASE,
        ModelDiff()),
    "an attribute rewritten: changed in place": (
        (F, X), BASE, (F, replace(X, attrs={3: b"renamed"})), BASE,
        ModelDiff(changed=((X, replace(X, attrs={3: b"renamed"})),))),
    "a reference added: changed in place": (
        (F, X), BASE, (F, replace(X, refs=((HAS_CAUSE, "ns=2;s=F"),))), BASE,
        ModelDiff(changed=((X, replace(X, refs=((HAS_CAUSE, "ns=2;s=F"),))),))),
    "a node that changed class: removed and added, its neighbours relinked": (
        (F, X, K), BASE, (obj("ns=2;s=F", cls=VIEW, type_def=None), X, K), BASE,
        ModelDiff(removed=("ns=2;s=F",), added=(obj("ns=2;s=F", cls=VIEW, type_def=None),),
                  relinks=(Relink("ns=2;s=F.X", parent=("ns=2;s=F", HAS_COMPONENT)),
                           Relink("ns=2;s=K", parent=("ns=2;s=F", HAS_COMPONENT),
                                  refs=((HAS_CAUSE, "ns=2;s=F"),))))),
    "a type re-created: its instance's type reference made again": (
        (obj("ns=2;s=T", cls=OBJECT_TYPE, type_def=None), obj("ns=2;s=I", type_def="ns=2;s=T")),
        BASE,
        (obj("ns=2;s=T", cls=VIEW, type_def=None), obj("ns=2;s=I", type_def="ns=2;s=T")), BASE,
        ModelDiff(removed=("ns=2;s=T",), added=(obj("ns=2;s=T", cls=VIEW, type_def=None),),
                  relinks=(Relink("ns=2;s=I", type_def="ns=2;s=T"),))),
    "a node appears that a kept node referred to already": (
        (F, replace(X, refs=((HAS_CAUSE, "ns=2;s=N"),))), BASE,
        (F, replace(X, refs=((HAS_CAUSE, "ns=2;s=N"),)), obj("ns=2;s=N")), BASE,
        ModelDiff(added=(obj("ns=2;s=N"),),
                  relinks=(Relink("ns=2;s=F.X", refs=((HAS_CAUSE, "ns=2;s=N"),)),))),
    "a URI listed twice: kept only where it stays at its index": (
        (obj("ns=2;s=A"), obj("ns=3;s=B")), (UA, "urn:src", "urn:d", "urn:d"),
        (obj("ns=2;s=A"), obj("ns=4;s=B")), (UA, "urn:src", "urn:d", "urn:x", "urn:d"),
        ModelDiff(removed=("ns=3;s=B",), added=(obj("ns=4;s=B"),))),
    "first model: everything is added": ((), (), (F, X), BASE, ModelDiff(added=(F, X))),
}


@pytest.mark.parametrize("old, old_ns, new, new_ns, want", CASES.values(), ids=CASES.keys())
def test_diff(old: tuple[NodeRecord, ...], old_ns: tuple[str, ...], new: tuple[NodeRecord, ...],
              new_ns: tuple[str, ...], want: ModelDiff) -> None:
    assert diff(old, old_ns, new, new_ns) == want


def test_same_ignores_reference_order_only() -> None:
    a = replace(K, refs=((HAS_CAUSE, "ns=2;s=F"), (ORGANIZES, "ns=2;s=X")))
    assert same(a, replace(a, refs=tuple(reversed(a.refs))))
    assert not same(a, replace(a, refs=a.refs[:1]))
    assert not same(a, replace(a, parent="ns=2;s=G"))


# (old namespaces, new namespaces, node id, its id under the new array)
RENUMBER = [
    (BASE, APPENDED, "ns=2;s=F", "ns=2;s=F"),
    (BASE, INSERTED, "ns=2;s=F", "ns=3;s=F"),
    (BASE, INSERTED, "ns=1;i=5", "ns=1;i=5"),
    (BASE, INSERTED, "i=85", "i=85"),
    (APPENDED, BETWEEN, "ns=3;g=09087e75-8e5e-499b-954f-f2a9603db28a",
     "ns=4;g=09087e75-8e5e-499b-954f-f2a9603db28a"),
    (APPENDED, BASE, "ns=3;s=E", None),
    (INSERTED, BASE, "ns=3;s=F", "ns=2;s=F"),
    (BASE, APPENDED, "ns=7;s=unknown", "ns=7;s=unknown"),  # not in the old array
    ((UA, "urn:d", "urn:d"), (UA, "urn:d", "urn:d"), "ns=2;s=A", "ns=2;s=A"),
    ((UA, "urn:d", "urn:d"), (UA, "urn:x", "urn:d", "urn:d"), "ns=1;s=A", None),
    (BASE, INSERTED, "ns=2;s=a;b=c", "ns=3;s=a;b=c"),
]


@pytest.mark.parametrize("old, new, node, want", RENUMBER)
def test_renumbering(old: tuple[str, ...], new: tuple[str, ...], node: str,
                     want: str | None) -> None:
    r = Renumbering.of(old, new)
    assert r.node(node) == want
    assert r.keeps(node) == (want == node)


@pytest.mark.parametrize("node, parts", [("ns=2;s=F", (2, "s=F")), ("i=85", (0, "i=85")),
                                         ("ns=12;i=3", (12, "i=3")),
                                         ("ns=2;s=x\ny", (2, "s=x\ny"))])
def test_split_and_join(node: str, parts: tuple[int, str]) -> None:
    assert split(node) == parts
    assert join(*parts) == node
