"""Model changes seen within seconds, on servers that emit no ModelChangeEvents.

Most servers never emit them, and a full re-crawl (`rebrowse_period`) is too
heavy to run often. While connected, the source checks the server against its
model every `change_check_period` seconds, a slice at a time, within the plant
budget (three requests a check):

```
every check:   NamespaceArray                     (one Read) != the model's ─► changed
               the next CHECK_CONTAINERS objects: their hierarchical children (one Browse,
                  node ids only) digested != the digest taken after the crawl ─► changed
               the next CHECK_NODES nodes: NodeClass, BrowseName, DataType (one Read)
                  != what the crawl read ─► changed
changed ─► crawl now (RECRAWL_GAP, or five crawls' time, after the last crawl)
```

What a check compares with is what the crawl saw: the digest of each object's
children from the crawl's own Browse answers, the attributes it read. A
difference is reported once and then taken as the new baseline, so one the
crawl does not confirm (a server that browses one way and crawls another) asks
for no more crawls. A change of an attribute the checks do not read (a
description, an EURange) is found by the next full re-crawl.

On a 20,000-variable plant in folders of 100 a pass over every folder takes
two checks and one over every node's names a hundred: an added or removed
variable is seen within seconds, a rename within minutes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from asyncua import ua
from asyncua.ua.ua_binary import variant_to_binary

from agent.opcua.crawl import (
    CLASS_ATTRS,
    HIERARCHICAL,
    Crawler,
    Limits,
    Session,
    children_digest,
)
from agent.opcua.model import ModelSnapshot

CHECK_CONTAINERS = 100
CHECK_NODES = 200
RECRAWL_GAP = 2.0  # seconds between crawls a check asks for, at least

A = ua.AttributeIds
T = TypeVar("T")
_ATTRS = (A.NodeClass, A.BrowseName, A.DataType)


class ChangeWatch:
    """Checks the server against `snapshot` (the model TX sends) and the `children`
    digests its crawl took, a slice at a time."""

    def __init__(self, snapshot: ModelSnapshot, children: dict[str, bytes]) -> None:
        self.namespaces = list(snapshot.namespaces)
        self._children = dict(children)
        self._seen: dict[tuple[str, int], bytes | None] = {}  # attributes found changed
        self.containers = list(children)
        self._records = [r for r in snapshot.nodes if not r.node_id.startswith("i=")]
        self._next_container = 0
        self._next_node = 0

    async def check(self, session: Session, limits: Limits, namespaces: Sequence[str]
                    ) -> str | None:
        """One check; what changed, or None."""
        if list(namespaces) != self.namespaces:
            return "its namespace array changed"
        crawler = Crawler(session, limits)
        crawler.namespaces = self.namespaces
        ids = self._slice(self.containers, "_next_container", CHECK_CONTAINERS)
        if ids:
            results = await crawler.browse([ua.NodeId.from_string(c) for c in ids],
                                           HIERARCHICAL, 0)
            for c, refs in zip(ids, results, strict=True):
                digest = children_digest(refs)
                if digest != self._children[c]:
                    self._children[c] = digest  # reported once: a crawl follows
                    return f"the children of {c} changed"
        recs = self._slice(self._records, "_next_node", CHECK_NODES)
        if recs:
            by_id = {r.node_id: r for r in recs}
            for nid, attr, dv in await crawler.read_attributes(
                    [ua.NodeId.from_string(r.node_id) for r in recs], _ATTRS):
                rec = by_id[nid]
                if dv.StatusCode is not None and dv.StatusCode.value == \
                        ua.StatusCodes.BadNodeIdUnknown:
                    if self._seen.get((nid, A.NodeId), b"") is None:
                        continue  # reported already
                    self._seen[(nid, A.NodeId)] = None
                    return f"{rec.node_id} is gone"
                if attr == A.NodeClass:
                    if dv.Value is not None and dv.Value.Value != rec.node_class:
                        return f"{rec.node_id} changed its node class"
                    continue
                if attr not in CLASS_ATTRS.get(rec.node_class, ()) and attr != A.BrowseName:
                    continue  # the crawl did not read it for this class
                now = variant_to_binary(dv.Value) if dv.Value is not None and (
                    dv.StatusCode is None or dv.StatusCode.is_good()) else None
                key = (nid, attr)
                if now != self._seen.get(key, rec.attrs.get(attr)):
                    self._seen[key] = now
                    return f"{rec.node_id} changed its {A(attr).name}"
        return None

    def _slice(self, items: list[T], cursor: str, n: int) -> list[T]:
        """The next `n` of `items`, round robin."""
        if not items:
            return []
        start = getattr(self, cursor) % len(items)
        out = items[start:start + n]
        if len(out) < n and len(items) > len(out):
            out += items[:min(n - len(out), start)]
        setattr(self, cursor, start + len(out))
        return out
