"""Node ids across two versions of a server's NamespaceArray. Pure.

A node id string carries a namespace *index* (``ns=3;s=X``), but what names a node
is its namespace's URI and its identifier: when the array changes, an index may
come to name another URI. An appended namespace moves no index, so it changes no
node id; one inserted before others moves those after it, and then ``ns=3;s=X``
may name a node of another namespace than before.

`Renumbering` maps each old index to the new index of the same URI (namespaces are
matched by URI). An index whose URI is listed twice in either array cannot be
matched so: it keeps its node ids only if the same URI stays at the same index.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_NS = re.compile(r"ns=(\d+);(.+)", re.S)


def split(node_id: str) -> tuple[int, str]:
    """(namespace index, the rest: ``s=X``, ``i=5``, ...) of a node id string."""
    m = _NS.fullmatch(node_id)
    return (int(m[1]), m[2]) if m else (0, node_id)


def join(index: int, rest: str) -> str:
    """The node id string of `rest` in namespace `index` (as asyncua writes it)."""
    return f"ns={index};{rest}" if index else rest


@dataclass(frozen=True)
class Renumbering:
    """Old namespace index -> new index of the same URI, None where it is gone."""

    moves: Mapping[int, int | None]

    @classmethod
    def of(cls, old: Sequence[str], new: Sequence[str]) -> Renumbering:
        moves: dict[int, int | None] = {0: 0}  # the OPC UA namespace, always index 0
        for i, uri in enumerate(old):
            if i == 0:
                continue
            if old.count(uri) == 1 and new.count(uri) == 1:
                moves[i] = new.index(uri)
            else:  # listed twice: only the same URI at the same index is surely the same
                moves[i] = i if i < len(new) and new[i] == uri else None
        return cls(moves)

    def keeps(self, node_id: str) -> bool:
        """Whether `node_id` still names the same node (its namespace kept its index)."""
        return self.node(node_id) == node_id

    def node(self, node_id: str) -> str | None:
        """The id of the same node under the new array; None if its namespace is gone.
        An index the old array did not have is left as it is (nothing says it moved)."""
        index, rest = split(node_id)
        if index not in self.moves:
            return node_id
        new = self.moves[index]
        if new is None:
            return None
        return node_id if new == index else join(new, rest)
