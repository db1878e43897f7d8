"""The OPC UA model snapshot: what TX learned of a server's address space. Pure.

TX crawls the server (agent/opcua/crawl.py) into a `ModelSnapshot`, sends it
as `OpcuaModel` chunk records, and RX rebuilds it (agent/opcua/mirror.py).

Wire layout of a snapshot (before chunking)::

    zlib( CBOR map {
        "format": 1,
        "namespaces": [uri, ...],           # the server's NamespaceArray, index = ns
        "nodes": [node, ...],               # parents before children
    } )

    node = [node_id, node_class, parent|null, parent_ref|null, type_def|null,
            {attribute_id: variant}, [[ref_type, target], ...]]

- Node ids are OPC UA strings (``ns=2;s=Plant``, ``i=85``) with the source's
  namespace indexes; the mirror copies the namespace array, so they are the
  same on both sides.
- `parent` is the node through which the crawl found this one, `parent_ref`
  the hierarchical (or HasEncoding) reference type from the parent; the
  other forward references of the node are in the list (HasTypeDefinition is
  in `type_def`, not in the list).
- Each attribute value is the attribute's Variant in OPC UA binary encoding,
  so every type (LocalizedText, StructureDefinition, ...) crosses as the
  server gave it. The Value attribute is only in the model for static values
  (properties of types and methods, e.g. EnumStrings, InputArguments); live
  values travel as `OpcuaValues` records.

The version is the first 16 hex digits of SHA-256 over the uncompressed CBOR,
so the same address space always has the same version and RX ignores the
carousel's re-sends of a model it already has.

Chunks: the compressed snapshot is cut into `chunk_size` pieces, each an
`OpcuaModel(source, version, index, count, data)` record. RX collects chunks
per version; a lost chunk comes again with the next carousel round, and the
chunks already held are kept (up to `ModelAssembler.max_versions` versions).
"""

from __future__ import annotations

import hashlib
import io
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import cbor2

from agent.link.wire import array_head, read_array_head
from agent.opcua.codec import OpcuaModel

FORMAT = 1
MAX_MODEL_BYTES = 512 << 20  # uncompressed; a bigger snapshot is refused


class ModelError(ValueError):
    """A snapshot that does not decode (a TX bug or a version skew)."""


@dataclass(frozen=True, slots=True)
class NodeRecord:
    node_id: str
    node_class: int
    parent: str | None = None
    parent_ref: str | None = None
    type_def: str | None = None
    attrs: dict[int, bytes] = field(default_factory=dict)
    refs: tuple[tuple[str, str], ...] = ()

    def to_list(self) -> list[Any]:
        return [self.node_id, self.node_class, self.parent, self.parent_ref, self.type_def,
                self.attrs, [list(r) for r in self.refs]]

    @classmethod
    def from_list(cls, f: Any, share: dict[Any, Any] | None = None) -> NodeRecord:
        """`share`: strings and bytes seen in earlier nodes, so that equal ones (a parent,
        a type, WriteMask 0) are one object for all the nodes of a snapshot."""
        if not isinstance(f, list) or len(f) != 7:
            raise ModelError("node is not a 7-item array")
        nid, nclass, parent, pref, tdef, attrs, refs = f
        if not (isinstance(nid, str) and isinstance(nclass, int) and isinstance(attrs, dict)
                and isinstance(refs, list)
                and all(x is None or isinstance(x, str) for x in (parent, pref, tdef))
                and all(isinstance(k, int) and isinstance(v, bytes) for k, v in attrs.items())
                and all(isinstance(r, list) and len(r) == 2 and isinstance(r[0], str)
                        and isinstance(r[1], str) for r in refs)):
            raise ModelError(f"node {nid!r} malformed")
        if share is None:
            return cls(nid, nclass, parent, pref, tdef, attrs, tuple((r[0], r[1]) for r in refs))
        def one(x: Any) -> Any:
            return share.setdefault(x, x)

        return cls(nid, nclass, parent and one(parent), pref and one(pref), tdef and one(tdef),
                   {k: one(v) for k, v in attrs.items()}, tuple((one(a), one(b)) for a, b in refs))


@dataclass(frozen=True)
class ModelSnapshot:
    namespaces: tuple[str, ...]
    nodes: tuple[NodeRecord, ...]

    def canonical(self) -> bytes:
        """`cbor2.dumps(map, canonical=True)`, node by node: cbor2's encoder holds the
        interpreter for a whole call (a second for 100,000 nodes, even in a worker
        thread). Canonical CBOR sorts the keys shortest first: nodes, format, namespaces."""
        dumps = cbor2.dumps
        return b"".join((
            b"\xa3", dumps("nodes"), array_head(len(self.nodes)),
            *(dumps(n.to_list(), canonical=True) for n in self.nodes),
            dumps("format"), dumps(FORMAT), dumps("namespaces"),
            dumps(list(self.namespaces), canonical=True)))

    def encode(self) -> tuple[str, bytes]:
        """(version, compressed bytes)."""
        raw = self.canonical()
        return version_of(raw), zlib.compress(raw, 6)

    @property
    def version(self) -> str:
        return version_of(self.canonical())

    def chunks(self, source: str, chunk_size: int = 16384) -> list[OpcuaModel]:
        version, data = self.encode()
        return split(source, version, data, chunk_size)

    @classmethod
    def decode(cls, data: bytes) -> tuple[str, ModelSnapshot]:
        """(version, snapshot) from compressed bytes; ModelError if they are not one."""
        raw = inflate(data, "model")
        try:
            item = _loads_in_pieces(raw)
        except Exception as exc:  # cbor2 raises several types
            raise ModelError(f"model does not decode: {exc}") from None
        if not isinstance(item, dict) or item.get("format") != FORMAT:
            raise ModelError("unknown model format")
        namespaces, nodes = item.get("namespaces"), item.get("nodes")
        if not (isinstance(namespaces, list) and all(isinstance(u, str) for u in namespaces)
                and isinstance(nodes, list)):
            raise ModelError("model malformed")
        share: dict[Any, Any] = {}
        return version_of(raw), cls(tuple(namespaces),
                                    tuple(NodeRecord.from_list(n, share) for n in nodes))


def inflate(data: bytes, what: str) -> bytes:
    """zlib-decompressed `data`, at most MAX_MODEL_BYTES; ModelError if it is not that."""
    try:
        d = zlib.decompressobj()
        raw = d.decompress(data, MAX_MODEL_BYTES)
    except zlib.error as exc:
        raise ModelError(f"{what} does not decode: {exc}") from None
    if d.unconsumed_tail:
        raise ModelError(f"{what} larger than {MAX_MODEL_BYTES} bytes")
    return raw


def _loads_in_pieces(raw: bytes) -> Any:
    """`cbor2.loads(raw)` for a snapshot map, its nodes one call each. cbor2's decoder
    holds the interpreter for a whole call: 0.6 s for 100,000 nodes, during which the
    event loop stood still even with the decode in a worker thread."""
    head = raw[0] if raw else 0
    if not 0xA0 <= head < 0xB8:  # not a small definite map: decoded whole
        return cbor2.loads(raw)
    fp = io.BytesIO(raw)
    fp.seek(1)
    decode = cbor2.CBORDecoder(fp).decode
    out: dict[Any, Any] = {}
    for _ in range(head & 0x1F):
        key = decode()
        if key != "nodes":
            out[key] = decode()
            continue
        try:
            count, size = read_array_head(raw[fp.tell():fp.tell() + 9])
        except ValueError:  # not a definite array (not TX's encoding): decoded whole
            return cbor2.loads(raw)
        fp.seek(fp.tell() + size)
        out[key] = [decode() for _ in range(count)]
    return out


def version_of(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


def split(source: str, version: str, data: bytes, chunk_size: int) -> list[OpcuaModel]:
    pieces = [data[i:i + chunk_size] for i in range(0, len(data), chunk_size)] or [b""]
    return [OpcuaModel(source, version, i, len(pieces), p) for i, p in enumerate(pieces)]


class ModelAssembler:
    """Collects `OpcuaModel` chunks until one version is whole. Sans-IO."""

    def __init__(self, max_versions: int = 2) -> None:
        self.max_versions = max_versions
        self.current: str | None = None
        self._previous: str | None = None
        self._pending: OrderedDict[str, tuple[int, dict[int, bytes]]] = OrderedDict()
        self.counters = {"model_chunks": 0, "model_chunks_ignored": 0, "models_complete": 0,
                         "models_bad": 0, "model_versions_dropped": 0}

    def add(self, rec: OpcuaModel) -> tuple[str, ModelSnapshot] | None:
        """Take one chunk; returns (version, snapshot) when its version is complete."""
        done = self.collect(rec)
        return None if done is None else self.decode(*done)

    def collect(self, rec: OpcuaModel) -> tuple[str, bytes] | None:
        """Take one chunk; returns (version, its compressed bytes) when it is complete,
        for `decode` (which can run in a thread: a big model takes seconds)."""
        c = self.counters
        c["model_chunks"] += 1
        if rec.version == self.current:
            c["model_chunks_ignored"] += 1
            return None
        entry = self._pending.get(rec.version)
        if entry is None or entry[0] != rec.count:
            entry = (rec.count, {})
            self._pending[rec.version] = entry
            while len(self._pending) > self.max_versions:
                self._pending.popitem(last=False)
                c["model_versions_dropped"] += 1
        self._pending.move_to_end(rec.version)
        count, chunks = entry
        chunks[rec.index] = rec.data
        if len(chunks) < count:
            return None
        del self._pending[rec.version]
        # its carousel copies are not collected again while it decodes
        self._previous, self.current = self.current, rec.version
        return rec.version, b"".join(chunks[i] for i in range(count))

    def decode(self, expected: str, data: bytes) -> tuple[str, ModelSnapshot] | None:
        """The snapshot of a collected version; None (counted) if it is not that."""
        c = self.counters
        try:
            version, snap = ModelSnapshot.decode(data)
        except ModelError:
            version = ""
        if version != expected:
            c["models_bad"] += 1
            self.current = self._previous
            return None
        c["models_complete"] += 1
        return version, snap

    def forget(self) -> None:
        """Accept the current version again (e.g. after the mirror was rebuilt)."""
        self.current = None


def historized(snap: ModelSnapshot, roots: tuple[str, ...], variable_class: int = 2,
               value_attr: int = 13) -> frozenset[str]:
    """The live variables of `snap` at or below one of `roots` (following the crawl's
    parents, which come before their children): those the mirror keeps a history of.
    A variable with its Value in the model (a static property) has nothing to keep."""
    if not roots:
        return frozenset()
    wanted = set(roots)
    inside: dict[str, bool] = {}
    out = set()
    for n in snap.nodes:
        here = n.node_id in wanted or (n.parent is not None and inside.get(n.parent, False))
        inside[n.node_id] = here
        if here and n.node_class == variable_class and value_attr not in n.attrs:
            out.add(n.node_id)
    return frozenset(out)
