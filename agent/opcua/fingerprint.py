"""Is a server's address space still the one TX crawled? Asked cheaply, on reconnect.

```
after a full crawl:  sample = every k-th node of the snapshot + its last nodes (at most SAMPLE)
                     digest = fingerprint(namespaces, roots, sample)        (kept with the model)
on a reconnect:      fingerprint(...) again == digest ─► reuse the model: no crawl
                                              != digest ─► full crawl, as on a first connect
fingerprint = SHA-256 over
  NamespaceArray                                   (the caller read it: one Read)
  the hierarchical children of every subtree root  (one Browse: added or removed top nodes)
  NodeClass, BrowseName, DataType of the sample    (one Read of 3 x SAMPLE attributes)
```

Three requests instead of a crawl of every node: a plant server that restarts
with the same configuration (the common case) is serving the mirror again in
about a second, within its load budget (docs/ARCHITECTURE.md, "OPC UA servers
under a gateway"). A server's start time cannot tell: it changes with every
restart, whether the model did or not. What the sample misses (a change deep in
the tree that leaves the roots and the sampled nodes alone) is found by the next
full re-crawl, `rebrowse_period` later at most, as between reconnects.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from asyncua import ua

from agent.opcua.crawl import HIERARCHICAL, Crawler, Limits, Session
from agent.opcua.model import ModelSnapshot

SAMPLE = 48
TAIL = 8  # the newest nodes (crawl order ends with the deepest, last added)

A = ua.AttributeIds
_ATTRS = (A.NodeClass, A.BrowseName, A.DataType)


def sample_of(snapshot: ModelSnapshot, n: int = SAMPLE) -> tuple[str, ...]:
    """Node ids spread over the whole snapshot, plus its last ones."""
    ids = [r.node_id for r in snapshot.nodes]
    if len(ids) <= n:
        return tuple(ids)
    spread = n - TAIL
    step = len(ids) / spread
    picks = [ids[int(i * step)] for i in range(spread)] + ids[-TAIL:]
    return tuple(dict.fromkeys(picks))


async def fingerprint(session: Session, limits: Limits, namespaces: Sequence[str],
                      roots: Sequence[str], sample: Sequence[str]) -> str:
    """The digest of what the module docstring lists; equal digests, same model (as far
    as three requests can tell)."""
    h = hashlib.sha256()
    for uri in namespaces:
        h.update(b"ns\0" + uri.encode() + b"\0")
    crawler = Crawler(session, limits)
    crawler.namespaces = list(namespaces)
    root_ids = [ua.NodeId.from_string(r) for r in roots]
    for root, refs in zip(roots, await crawler.browse(root_ids, HIERARCHICAL), strict=True):
        h.update(b"root\0" + root.encode() + b"\0")
        for line in sorted(f"{r.ReferenceTypeId.to_string()} {r.NodeId.to_string()} "
                           f"{r.BrowseName.to_string()}" for r in refs):
            h.update(line.encode() + b"\0")
    for nid, attr, dv in await crawler.read_attributes(
            [ua.NodeId.from_string(s) for s in sample], _ATTRS):
        code = dv.StatusCode.value if dv.StatusCode is not None else 0
        value = repr(dv.Value.Value) if dv.Value is not None else ""
        h.update(f"{nid} {int(attr)} {code} {value}".encode() + b"\0")
    return h.hexdigest()[:32]
