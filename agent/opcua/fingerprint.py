"""Is a server's address space still the one TX crawled? Asked cheaply, on reconnect.

```
after a full crawl:  probe = every k-th node of the snapshot + its last nodes (at most SAMPLE)
                             + its objects (at most CONTAINERS, spread over the snapshot)
                     digest = fingerprint(namespaces, roots, probe)         (kept with the model)
on a reconnect:      fingerprint(...) again == digest ─► reuse the model: no crawl
                                              != digest ─► full crawl, as on a first connect
fingerprint = SHA-256 over
  NamespaceArray                                 (the caller read it: one Read)
  the hierarchical children of the subtree roots (one Browse, with their names)
  the node ids below each object of the probe    (Browse, node ids only: a variable or
                                                  folder added or removed anywhere below them)
  NodeClass, BrowseName, DataType of the sample  (one Read of 3 x SAMPLE attributes)
```

A few requests instead of a crawl of every node and attribute: a plant server
that restarts with the same configuration (the common case) serves the mirror
again about a second after it is back, within its load budget
(docs/ARCHITECTURE.md, "OPC UA servers under a gateway"): for a 10,000-variable
server in folders of 100, a Browse of 100 folders answered with node ids only,
against a crawl's Browse and Read of every node. A server's start time cannot
tell: it changes with every restart, whether the model did or not. What the
probe misses (a renamed node outside the sample, a change below more than
CONTAINERS objects) is found by the next full re-crawl, `rebrowse_period` later at
most, as between reconnects.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from asyncua import ua

from agent.opcua.crawl import HIERARCHICAL, Crawler, Limits, Session
from agent.opcua.model import ModelSnapshot

SAMPLE = 48
TAIL = 8  # the newest nodes (crawl order ends with the deepest, last added)
CONTAINERS = 256

A = ua.AttributeIds
_ATTRS = (A.NodeClass, A.BrowseName, A.DataType)


@dataclass(frozen=True)
class Probe:
    """What a fingerprint looks at besides the roots: node ids of the snapshot."""
    sample: tuple[str, ...]      # their attributes are read
    containers: tuple[str, ...]  # their children are listed


def _spread(ids: list[str], n: int) -> list[str]:
    if len(ids) <= n:
        return ids
    step = len(ids) / n
    return [ids[int(i * step)] for i in range(n)]


def probe_of(snapshot: ModelSnapshot, n: int = SAMPLE) -> Probe:
    """Nodes spread over the whole snapshot (and its last ones), and its objects."""
    ids = [r.node_id for r in snapshot.nodes]
    sample = ids if len(ids) <= n else _spread(ids, n - TAIL) + ids[-TAIL:]
    objects = [r.node_id for r in snapshot.nodes if r.node_class == ua.NodeClass.Object]
    return Probe(tuple(dict.fromkeys(sample)), tuple(_spread(objects, CONTAINERS)))


async def fingerprint(session: Session, limits: Limits, namespaces: Sequence[str],
                      roots: Sequence[str], probe: Probe) -> str:
    """The digest of what the module docstring lists; equal digests, same model (as far
    as these few requests can tell)."""
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
    containers = [ua.NodeId.from_string(c) for c in probe.containers]
    for c, refs in zip(probe.containers, await crawler.browse(containers, HIERARCHICAL, 0),
                       strict=True):
        h.update(b"in\0" + c.encode() + b"\0")
        for line in sorted(r.NodeId.to_string() for r in refs):
            h.update(line.encode() + b"\0")
    for nid, attr, dv in await crawler.read_attributes(
            [ua.NodeId.from_string(s) for s in probe.sample], _ATTRS):
        code = dv.StatusCode.value if dv.StatusCode is not None else 0
        value = repr(dv.Value.Value) if dv.Value is not None else ""
        h.update(f"{nid} {int(attr)} {code} {value}".encode() + b"\0")
    return h.hexdigest()[:32]
