"""What a new model version changes in the mirror's address space. Pure.

The mirror applies a new `ModelSnapshot` as a diff, so IT clients' subscriptions on
the nodes that did not really change keep flowing::

    old records + old NamespaceArray ┐
    new records + new NamespaceArray ┴─► ModelDiff: removed, added, changed, relinks

- A node is the same node when its namespace kept its index (agent/opcua/namespaces.py:
  matched by URI) and the new snapshot has its id: then it is unchanged, or changed in
  place (attributes, type, parent, references: `Builder.update`), or, if it changed
  class, removed and added again (a new node under an old id).
- A node whose namespace moved to another index has another node id now: its old id
  is removed and its new one added. The old id string may name a node of another
  namespace in the new snapshot: that one is added too, never taken for the old node.
- References in the records are unchanged or not as strings, but an unchanged
  reference may point at a node that is added in this diff (re-created under an id
  it had, or there for the first time): deleting a node drops its neighbours'
  references to it, and its children's link from it, so those are `relinks`, to add
  again once it is back.
- A change in the order of a node's references only is no change (the mirror keeps
  them as a set).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from agent.opcua.model import NodeRecord
from agent.opcua.namespaces import Renumbering


@dataclass(frozen=True)
class Relink:
    """The references of a kept node to or from nodes this diff adds, to add again."""

    node_id: str
    parent: tuple[str, str] | None = None      # (parent, reference type) from a re-added parent
    refs: tuple[tuple[str, str], ...] = ()     # its forward references to added nodes
    type_def: str | None = None                # its type, if the type is added


@dataclass(frozen=True)
class ModelDiff:
    removed: tuple[str, ...] = ()                            # old ids, children first
    added: tuple[NodeRecord, ...] = ()                       # parents first (the snapshot's order)
    changed: tuple[tuple[NodeRecord, NodeRecord], ...] = ()  # (old, new), same id and class
    relinks: tuple[Relink, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.removed or self.added or self.changed or self.relinks)


def same(old: NodeRecord, new: NodeRecord) -> bool:
    """Nothing the mirror serves differs (references compared as a set)."""
    return old == new or (replace(old, refs=()) == replace(new, refs=())
                          and set(old.refs) == set(new.refs))


def diff(old: Iterable[NodeRecord], old_namespaces: Sequence[str],
         new: Sequence[NodeRecord], new_namespaces: Sequence[str]) -> ModelDiff:
    """What turns the mirrored `old` records (in their snapshot order) into `new`."""
    olds = list(old)
    renumbering = Renumbering.of(old_namespaces, new_namespaces)
    by_id = {r.node_id: r for r in new}
    kept: dict[str, NodeRecord] = {}  # old records of the nodes that stay
    removed: list[str] = []
    for o in reversed(olds):
        n = by_id.get(o.node_id)
        if n is not None and renumbering.keeps(o.node_id) and n.node_class == o.node_class:
            kept[o.node_id] = o
        else:
            removed.append(o.node_id)
    added = tuple(r for r in new if r.node_id not in kept)
    changed = tuple((kept[r.node_id], r) for r in new
                    if r.node_id in kept and not same(kept[r.node_id], r))
    fresh = {r.node_id for r in added}
    relinks = tuple(x for x in (_relink(kept[r.node_id], r, fresh) for r in new
                                if r.node_id in kept) if x is not None)
    return ModelDiff(tuple(removed), added, changed, relinks)


def _relink(old: NodeRecord, new: NodeRecord, fresh: set[str]) -> Relink | None:
    """The references of a kept node that `Builder.update` leaves alone (the same in
    both records) but that touch a node added now, so they are gone or were never made."""
    parent = None
    if new.parent in fresh and new.parent_ref is not None \
            and (old.parent, old.parent_ref) == (new.parent, new.parent_ref):
        parent = (new.parent, new.parent_ref)
    before = set(old.refs)
    refs = tuple(r for r in new.refs if r[1] in fresh and r in before)
    type_def = new.type_def if new.type_def in fresh and old.type_def == new.type_def else None
    if parent is None and not refs and type_def is None:
        return None
    return Relink(new.node_id, parent, refs, type_def)
