"""A model that grows while TX crawls: the first crawl's nodes cross as they are read.
Pure.

A crawl of a big plant takes TX tens of seconds, and building its nodes takes the
mirror about as long again. When TX has no model yet (its first crawl, and no cached
one), the crawler hands over nodes as soon as all their attributes are read, parents
before children, and TX sends them as `OpcuaModelPart` records; the mirror builds
them as they come, so the two overlap and IT clients browse what already arrived::

    crawl ─► nodes read ─► OpcuaModelPart(crawl, 0 .. n-1, "", nodes) ─► mirror builds them
          └► snapshot   ─► OpcuaModelPart(crawl, n, version, no nodes) ─► those nodes are
                                                                         `version`: served

- `crawl` names one crawl (random), `index` counts its parts from 0. The end part
  carries the snapshot's version (model.py: the same hash as `OpcuaModel`'s).
- A mirror that got every part of a crawl in order checks that its nodes make that
  version and serves it: the snapshot does not cross again until the model carousel's
  next round, so a slow link carries the model once.
- A mirror that missed a part, or started in the middle of a crawl, stops growing
  there and waits for the carousel's `OpcuaModel`, which it applies as a diff to what
  it grew. A mirror that serves a model already ignores parts.

Part data: zlib(CBOR [namespaces, [node, ...]]), a node as in model.py, at most
`size` bytes (the nodes are halved until they fit; a node too big alone goes alone).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

import cbor2

from agent.opcua.codec import OpcuaModelPart
from agent.opcua.model import ModelError, ModelSnapshot, NodeRecord, inflate


def encode_nodes(namespaces: Sequence[str], nodes: Sequence[NodeRecord]) -> bytes:
    return zlib.compress(cbor2.dumps([list(namespaces), [n.to_list() for n in nodes]]), 6)


def decode_nodes(data: bytes) -> tuple[tuple[str, ...], list[NodeRecord]]:
    """(namespaces, nodes) of a part; ModelError if it is not one."""
    raw = inflate(data, "model part")
    try:
        item = cbor2.loads(raw)
    except Exception as exc:  # cbor2 raises several types
        raise ModelError(f"model part does not decode: {exc}") from None
    if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], list)
            and all(isinstance(u, str) for u in item[0]) and isinstance(item[1], list)):
        raise ModelError("model part malformed")
    share: dict[Any, Any] = {}
    return tuple(item[0]), [NodeRecord.from_list(n, share) for n in item[1]]


def parts(source: str, crawl: str, index: int, namespaces: Sequence[str],
          nodes: Sequence[NodeRecord], size: int) -> list[OpcuaModelPart]:
    """`nodes` as parts numbered from `index`, each at most `size` bytes of data."""
    data = encode_nodes(namespaces, nodes)
    if len(data) <= size or len(nodes) <= 1:
        return [OpcuaModelPart(source, crawl, index, "", data)]
    half = len(nodes) // 2
    first = parts(source, crawl, index, namespaces, nodes[:half], size)
    return first + parts(source, crawl, index + len(first), namespaces, nodes[half:], size)


class PartWriter:
    """TX's side: one crawl's parts, numbered, handed to `push` (the source's live queue)
    as the crawler reads the nodes; `end(version)` once the snapshot is made."""

    def __init__(self, source: str, crawl: str, size: int,
                 push: Callable[[OpcuaModelPart], None]) -> None:
        self.source, self.crawl, self.size, self._push = source, crawl, size, push
        self.index = 0

    def __call__(self, namespaces: Sequence[str], nodes: list[NodeRecord]) -> None:
        for part in parts(self.source, self.crawl, self.index, namespaces, nodes, self.size):
            self._push(part)
            self.index += 1

    def end(self, version: str) -> None:
        self._push(OpcuaModelPart(self.source, self.crawl, self.index, version, b""))
        self.index += 1


class Growth:
    """Which parts the mirror builds: those of one crawl, in order, from its first.
    Sans-IO; `records` is what they held, in order."""

    def __init__(self) -> None:
        self.crawl: str | None = None
        self.next = 0
        self.namespaces: tuple[str, ...] | None = None
        self.records: list[NodeRecord] = []

    def accept(self, part: OpcuaModelPart) -> bool:
        """Whether to build this part: a crawl's first part starts it again; a later
        one must be the next of the same crawl, or the crawl stops growing here."""
        if part.index == 0:
            self.crawl, self.next, self.namespaces, self.records = part.crawl, 0, None, []
        if part.crawl != self.crawl or part.index != self.next:
            self.crawl = None
            return False
        self.next += 1
        return True

    def add(self, namespaces: tuple[str, ...], nodes: list[NodeRecord]) -> bool:
        """The nodes of an accepted part; False (and the crawl stops growing) if its
        namespace array is not the crawl's."""
        if self.namespaces is None:
            self.namespaces = namespaces
        elif namespaces != self.namespaces:
            self.crawl = None
            return False
        self.records.extend(nodes)
        return True

    def snapshot(self) -> ModelSnapshot:
        return ModelSnapshot(self.namespaces or (), tuple(self.records))

    def reset(self) -> None:
        self.crawl, self.next, self.namespaces, self.records = None, 0, None, []
