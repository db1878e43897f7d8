"""Crawl an OPC UA server's address space into a `ModelSnapshot`, fast and whole.

```
NamespaceArray ─► types: Types folder ─► (HasSubtype / Organizes through ns 0) ─► every non-ns-0 type
                  instances: subtrees ─► (hierarchical references) ─► every non-ns-0 node
                        │ Browse chunked to MaxNodesPerBrowse, BrowseNext until no continuation point
                        ▼
                  Read chunked to MaxNodesPerRead: names, description, class attributes,
                  DataTypeDefinition, static values (type and method properties)
                        ▼
                  ModelSnapshot (parents before children) + the variables to subscribe
```

asyncua's high-level helpers are not used for the crawl: `browse_nodes` does not
follow continuation points and per-node reads are one request each. Requests
are chunked to the server's operation limits (0 means "no limit"; we still
cap, and halve a chunk the server refuses with BadTooManyOperations).

Namespace 0 nodes are never copied: the mirror has its own standard address
space. They are browsed only as anchors (the Types tree, the Objects folder)
to find the server's own nodes below them.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import variant_from_binary

from agent.loop_watch import Slices
from agent.opcua.model import ModelSnapshot, NodeRecord
from agent.opcua.raw_values import RawValue, read_raw
from agent.opcua.ua import node_id

log = logging.getLogger("diode.source.opcua")

A = ua.AttributeIds
_O = ua.ObjectIds

DEFAULT_MAX_BROWSE = 1000
DEFAULT_MAX_READ = 5000
DEFAULT_MAX_MONITORED = 1000
HARD_CAP = 10000  # never more per request, whatever the server says
PIPELINE = 2  # crawl reads in flight: the server answers one while TX decodes the other
MONITORED_CAP = 1000  # creating monitored items is slow on small servers: keep requests short

HAS_TYPE_DEFINITION = node_id(_O.HasTypeDefinition)
HAS_SUBTYPE = node_id(_O.HasSubtype)
HAS_ENCODING = node_id(_O.HasEncoding)
ORGANIZES = node_id(_O.Organizes)
HIERARCHICAL = node_id(_O.HierarchicalReferences)
_KNOWN_HIER = {node_id(i) for i in (
    _O.HierarchicalReferences, _O.HasChild, _O.Organizes, _O.HasEventSource, _O.Aggregates,
    _O.HasSubtype, _O.HasProperty, _O.HasComponent, _O.HasNotifier, _O.HasOrderedComponent)}
_KNOWN_NONHIER = {node_id(i) for i in (
    _O.References, _O.NonHierarchicalReferences, _O.HasModellingRule, _O.HasEncoding,
    _O.HasDescription, _O.HasTypeDefinition, _O.GeneratesEvent)}

# What the crawl takes from a reference (the target's names come with its attributes):
# without BrowseName, DisplayName and TypeDefinition the server encodes, and TX decodes,
# less (the browse of a 10,000-variable plant: 1.05 s, was 1.11)
CRAWL_MASK = (ua.BrowseResultMask.ReferenceTypeId | ua.BrowseResultMask.IsForward
              | ua.BrowseResultMask.NodeClass)

T = TypeVar("T")
_COMMON = (A.BrowseName, A.DisplayName, A.Description)
_NAMES = frozenset((A.BrowseName, A.DisplayName))  # a node's own: not worth sharing
CLASS_ATTRS: dict[int, tuple[ua.AttributeIds, ...]] = {
    ua.NodeClass.Object: (A.EventNotifier,),
    ua.NodeClass.Variable: (A.DataType, A.ValueRank, A.ArrayDimensions, A.AccessLevel,
                            A.UserAccessLevel, A.MinimumSamplingInterval, A.Historizing),
    ua.NodeClass.Method: (A.Executable, A.UserExecutable),
    ua.NodeClass.ObjectType: (A.IsAbstract,),
    ua.NodeClass.VariableType: (A.Value, A.DataType, A.ValueRank, A.ArrayDimensions, A.IsAbstract),
    ua.NodeClass.ReferenceType: (A.IsAbstract, A.Symmetric, A.InverseName),
    ua.NodeClass.DataType: (A.IsAbstract, A.DataTypeDefinition),
    ua.NodeClass.View: (A.ContainsNoLoops, A.EventNotifier),
}


class Session(Protocol):
    """The part of asyncua's UaClient the crawler uses (a fake in unit tests)."""

    async def browse(self, parameters: ua.BrowseParameters) -> list[ua.BrowseResult]: ...
    async def browse_next(self, parameters: ua.BrowseNextParameters) -> list[ua.BrowseResult]: ...
    async def read(self, parameters: ua.ReadParameters) -> list[ua.DataValue]: ...


@dataclass
class Limits:
    """Nodes per request the server takes (halved when it says BadTooManyOperations),
    monitored items per subscription and subscriptions per session (0: no limit).

    Its MinSupportedSampleRate is not taken: asking 0 ("the fastest practical")
    lets a server monitor on change, where asking its minimum would make it poll."""
    browse: int = DEFAULT_MAX_BROWSE
    read: int = DEFAULT_MAX_READ
    monitored: int = DEFAULT_MAX_MONITORED
    per_subscription: int = 0
    subscriptions: int = 0

    @classmethod
    def from_server(cls, values: Sequence[Any]) -> Limits:
        def pick(v: Any, default: int, cap: int = HARD_CAP) -> int:
            return min(int(v), cap) if isinstance(v, int) and v > 0 else default
        b, r, m, per_sub, subs = (list(values) + [None] * 5)[:5]
        return cls(pick(b, DEFAULT_MAX_BROWSE), pick(r, DEFAULT_MAX_READ),
                   min(pick(m, DEFAULT_MAX_MONITORED), MONITORED_CAP),
                   pick(per_sub, 0, 1 << 31), pick(subs, 0, 1 << 31))


LIMIT_NODES = (node_id(_O.Server_ServerCapabilities_OperationLimits_MaxNodesPerBrowse),
               node_id(_O.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead),
               node_id(_O.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall),
               node_id(_O.Server_ServerCapabilities_MaxMonitoredItemsPerSubscription),
               node_id(_O.Server_ServerCapabilities_MaxSubscriptionsPerSession))


async def read_limits(session: Session) -> Limits:
    """The server's operation limits; defaults where it does not say."""
    params = ua.ReadParameters()
    params.NodesToRead = [_rv(n, A.Value) for n in LIMIT_NODES]
    try:
        dvs = await session.read(params)
    except ua.UaStatusCodeError:
        return Limits()
    return Limits.from_server([dv.Value.Value if dv.Value is not None and (
        dv.StatusCode is None or dv.StatusCode.is_good()) else None for dv in dvs])


@dataclass(slots=True)
class _Found:
    nid: ua.NodeId
    node_class: int
    parent: ua.NodeId | None = None
    parent_ref: ua.NodeId | None = None
    type_def: ua.NodeId | None = None
    refs: list[tuple[ua.NodeId, ua.NodeId]] = field(default_factory=list)
    in_types: bool = False
    static: bool = False
    attrs: dict[int, bytes] = field(default_factory=dict)
    value: RawValue | None = None  # a live variable's, read with the crawl (growth)


@dataclass
class CrawlResult:
    snapshot: ModelSnapshot
    variables: list[str]            # instance variables to subscribe, node id strings
    counters: dict[str, int]
    # variables whose MinimumSamplingInterval says the server cannot sample them
    # faster than this (ms)
    min_sampling: dict[str, float] = field(default_factory=dict)
    # object (and subtree root) -> children_digest of its hierarchical references, as
    # the crawl saw them: what agent/opcua/change_watch.py compares with
    children: dict[str, bytes] = field(default_factory=dict)


def children_digest(refs: Iterable[ua.ReferenceDescription]) -> bytes:
    """The target node ids of a node's hierarchical references, digested."""
    h = hashlib.blake2b(digest_size=12)
    for line in sorted(r.NodeId.to_string() for r in refs):
        h.update(line.encode() + b"\0")
    return h.digest()


_NO_ENCODING = ua.QualifiedName()  # one for every ReadValueId (a crawl makes a million)


def _rv(nid: ua.NodeId, attr: int) -> ua.ReadValueId:
    return ua.ReadValueId(nid, attr, None, _NO_ENCODING)


def _plain(nid: Any, namespaces: Sequence[str]) -> ua.NodeId | None:
    """An ExpandedNodeId as a local NodeId (None for a node on another server)."""
    if getattr(nid, "ServerIndex", 0):
        return None
    uri = getattr(nid, "NamespaceUri", None)
    ns = nid.NamespaceIndex
    if uri:
        if uri not in namespaces:
            return None
        ns = namespaces.index(uri)
    return node_id(nid.Identifier, ns, nid.NodeIdType)


class Crawler:
    def __init__(self, session: Session, limits: Limits) -> None:
        self.session = session
        self.limits = limits
        self.namespaces: list[str] = []
        self._hier: dict[ua.NodeId, bool] = {n: True for n in _KNOWN_HIER}
        self._hier.update({n: False for n in _KNOWN_NONHIER})
        self.counters = {"browse_requests": 0, "browse_next_requests": 0, "read_requests": 0,
                         "browse_errors": 0, "read_errors": 0}
        self.children: dict[str, bytes] = {}
        self._live = False  # reading the live variables' values too
        self._share: dict[bytes, bytes] = {}  # attribute values, one object each
        # reference types and type definitions, one object each (and so their strings in
        # the records): 100,000 variables name the same few
        self._ids: dict[ua.NodeId, ua.NodeId] = {}
        self._strings: dict[ua.NodeId, str] = {}

    async def crawl(self, roots: Sequence[ua.NodeId], namespaces: Sequence[str],
                    grow: Grow | None = None) -> CrawlResult:
        """The address space below `roots`. `grow`, if given, gets the namespace array,
        the nodes (as their records, in the snapshot's order) as soon as all their
        attributes are read, and the values of the live variables among them, read with
        them (agent/opcua/growth.py)."""
        self.namespaces = list(namespaces)
        found: dict[ua.NodeId, _Found] = {}
        order: list[ua.NodeId] = []
        # Types first: instances refer to them (HasTypeDefinition, DataType).
        await self._walk([node_id(_O.TypesFolder)], found, order, types=True)
        anchors: list[ua.NodeId] = []
        for root in roots:
            if root.NamespaceIndex == 0:
                anchors.append(root)
            elif root not in found:
                await self._add_root(root, found, order)
        await self._walk(anchors + [r for r in roots if r.NamespaceIndex != 0 and r in found],
                         found, order, types=False)
        built: list[NodeRecord] = []
        grower = _Grower(grow, built, self.namespaces, self._strings)
        await self._read_attributes([found[n] for n in order], grower)
        # a plant of 100,000 nodes takes a second or more to assemble: not in the loop
        return await asyncio.to_thread(self._result, found, order, built)

    def _result(self, found: dict[ua.NodeId, _Found], order: list[ua.NodeId],
                built: list[NodeRecord]) -> CrawlResult:
        """`built`: the records `grow` was given (all of them, or none)."""
        nodes = tuple(built) if built else tuple(_record_of(found[n], self._strings)
                                                  for n in order)
        variables = [f.nid.to_string() for f in (found[n] for n in order) if _live(f)]
        min_sampling = {}
        for f in (found[n] for n in order):
            ms = _duration(f.attrs.get(A.MinimumSamplingInterval))
            if ms > 0 and f.node_class == ua.NodeClass.Variable and not f.in_types:
                min_sampling[f.nid.to_string()] = ms
        return CrawlResult(ModelSnapshot(tuple(self.namespaces), nodes), variables,
                           dict(self.counters), min_sampling, self.children)

    # -- for the reconnect check (agent/opcua/fingerprint.py) ----------------

    async def browse(self, nodes: list[ua.NodeId], reftype: ua.NodeId | None,
                     mask: int = ua.BrowseResultMask.All
                     ) -> list[list[ua.ReferenceDescription]]:
        """Forward references of each node (of `reftype` and its subtypes), whole; `mask`
        0 asks for the target node ids only (a smaller answer)."""
        return await self._browse(nodes, ua.BrowseDirection.Forward, reftype, mask)

    async def read_attributes(self, nodes: Sequence[ua.NodeId], attrs: Sequence[int]
                              ) -> list[tuple[str, int, ua.DataValue]]:
        """(node id, attribute, DataValue) of each attribute of each node, chunked."""
        wanted = [(n, a) for n in nodes for a in attrs]
        out: list[tuple[str, int, ua.DataValue]] = []
        step = self.limits.read
        for i in range(0, len(wanted), step):
            batch = wanted[i:i + step]
            params = ua.ReadParameters()
            params.TimestampsToReturn = ua.TimestampsToReturn.Neither
            params.NodesToRead = [_rv(n, a) for n, a in batch]
            self.counters["read_requests"] += 1
            dvs = await self.session.read(params)
            out += [(n.to_string(), int(a), dv) for (n, a), dv in zip(batch, dvs, strict=True)]
        return out

    # -- browse --------------------------------------------------------------

    async def _add_root(self, root: ua.NodeId, found: dict[ua.NodeId, _Found],
                        order: list[ua.NodeId]) -> None:
        """A configured subtree below Objects: record it, hung from its own parent."""
        params = ua.ReadParameters()
        params.NodesToRead = [_rv(root, A.NodeClass)]
        self.counters["read_requests"] += 1
        dv = (await self.session.read(params))[0]
        if dv.Value is None or (dv.StatusCode is not None and not dv.StatusCode.is_good()):
            raise ValueError(f"subtree {root.to_string()} does not exist on the server "
                             f"({dv.StatusCode.name if dv.StatusCode else 'no value'})")
        f = _Found(root, int(dv.Value.Value))
        results = await self._browse([root], ua.BrowseDirection.Inverse, HIERARCHICAL)
        for ref in results[0]:
            parent = _plain(ref.NodeId, self.namespaces)
            if parent is not None:
                f.parent, f.parent_ref = parent, ref.ReferenceTypeId
                break
        found[root] = f
        order.append(root)

    async def _walk(self, starts: list[ua.NodeId], found: dict[ua.NodeId, _Found],
                    order: list[ua.NodeId], *, types: bool) -> None:
        """Breadth first from `starts`; ns-0 nodes are anchors, browsed but not recorded."""
        seen_anchor: set[ua.NodeId] = set()
        frontier = []
        for s in starts:
            if s.NamespaceIndex == 0:
                seen_anchor.add(s)
            frontier.append(s)
        slices = Slices()
        while frontier:
            anchors = [n for n in frontier if n not in found]
            recorded = [n for n in frontier if n in found]
            nxt: list[ua.NodeId] = []
            # Anchors: only hierarchical references matter.
            if anchors:
                results = await self._browse(anchors, ua.BrowseDirection.Forward, HIERARCHICAL)
                for src, refs in zip(anchors, results, strict=True):
                    await slices()
                    if not types:
                        self.children[src.to_string()] = children_digest(refs)
                    for ref in refs:
                        target = _plain(ref.NodeId, self.namespaces)
                        if target is None:
                            continue
                        if target.NamespaceIndex != 0:
                            if target not in found:
                                self._record(target, ref, src, found, order, types)
                                nxt.append(target)
                        elif types and ref.ReferenceTypeId in (HAS_SUBTYPE, ORGANIZES) \
                                and target not in seen_anchor:
                            seen_anchor.add(target)
                            nxt.append(target)
            if recorded:
                results = await self._browse(recorded, ua.BrowseDirection.Forward, None)
                await self._resolve_reftypes({r.ReferenceTypeId for refs in results for r in refs})
                for src, refs in zip(recorded, results, strict=True):
                    await slices()
                    f = found[src]
                    if not types and f.node_class == ua.NodeClass.Object:
                        self.children[src.to_string()] = children_digest(
                            r for r in refs if self._hier.get(r.ReferenceTypeId, False))
                    for ref in refs:
                        target = _plain(ref.NodeId, self.namespaces)
                        if target is None:
                            continue
                        rtype = ref.ReferenceTypeId
                        if rtype == HAS_TYPE_DEFINITION:
                            f.type_def = self._ids.setdefault(target, target)
                            continue
                        child = target.NamespaceIndex != 0 and (
                            self._hier.get(rtype, False) or rtype == HAS_ENCODING)
                        if child and target not in found:
                            self._record(target, ref, src, found, order, types)
                            if f.node_class == ua.NodeClass.Method:
                                found[target].static = True
                            nxt.append(target)
                        elif child and found[target].parent == src \
                                and found[target].parent_ref == rtype:
                            continue
                        else:
                            f.refs.append((rtype, target))
            frontier = nxt

    def _record(self, target: ua.NodeId, ref: ua.ReferenceDescription, parent: ua.NodeId,
                found: dict[ua.NodeId, _Found], order: list[ua.NodeId], types: bool) -> None:
        rtype = self._ids.setdefault(ref.ReferenceTypeId, ref.ReferenceTypeId)
        found[target] = _Found(target, int(ref.NodeClass), parent, rtype,
                               in_types=types, static=types)
        order.append(target)

    async def _browse(self, nodes: list[ua.NodeId], direction: ua.BrowseDirection,
                      reftype: ua.NodeId | None, mask: int = CRAWL_MASK
                      ) -> list[list[ua.ReferenceDescription]]:
        """All references of each node, chunked, continuation points followed: the first
        request alone (it learns the server's real limit), the rest `PIPELINE` at a time.
        A node the server had no continuation point for is browsed again afterwards,
        one request at a time (up to 3 times)."""
        out: list[list[ua.ReferenceDescription]] = [[] for _ in nodes]
        todo = list(range(len(nodes)))
        for attempt in range(4):
            again: list[int] = []
            request = functools.partial(self._browse_batch, nodes=nodes, direction=direction,
                                        reftype=reftype, mask=mask, out=out, again=again,
                                        last=attempt == 3)
            first = self.limits.browse
            if todo:
                await request(todo[:first])
            step = self.limits.browse  # halved by the first, if the server refused it
            await _pipelined(request, [todo[i:i + step] for i in range(first, len(todo), step)],
                             PIPELINE if attempt == 0 else 1)
            if not again:
                break
            todo = again
        return out

    async def _browse_batch(self, batch: list[int], nodes: list[ua.NodeId],
                            direction: ua.BrowseDirection, reftype: ua.NodeId | None, mask: int,
                            out: list[list[ua.ReferenceDescription]], again: list[int],
                            last: bool) -> None:
        """One request for `batch`; halves that the server refused with
        BadTooManyOperations (and lowers the limit for the requests after it)."""
        params = ua.BrowseParameters()
        params.RequestedMaxReferencesPerNode = 0
        for k in batch:
            desc = ua.BrowseDescription()
            desc.NodeId = nodes[k]
            desc.BrowseDirection = direction
            desc.ReferenceTypeId = reftype if reftype is not None else node_id()
            desc.IncludeSubtypes = True
            desc.NodeClassMask = 0
            desc.ResultMask = mask
            params.NodesToBrowse.append(desc)
        self.counters["browse_requests"] += 1
        try:
            results = await self.session.browse(params)
        except ua.UaStatusCodeError as exc:
            if exc.code != ua.StatusCodes.BadTooManyOperations or len(batch) == 1:
                raise
            half = max(1, len(batch) // 2)
            self.limits.browse = min(self.limits.browse, half)
            for i in range(0, len(batch), half):
                await self._browse_batch(batch[i:i + half], nodes, direction, reftype, mask, out,
                                         again, last)
            return
        continuations: list[tuple[int, bytes]] = []
        for k, res in zip(batch, results, strict=True):
            code = res.StatusCode
            if code is not None and not code.is_good():
                if code.value == ua.StatusCodes.BadNoContinuationPoints and not last:
                    again.append(k)  # browse again in a later (quieter) round
                else:
                    self.counters["browse_errors"] += 1
                    log.debug("browse %s: %s", nodes[k].to_string(), code.name)
                continue
            out[k].extend(res.References)
            if res.ContinuationPoint:
                continuations.append((k, res.ContinuationPoint))
        await self._browse_next(continuations, out)

    async def _browse_next(self, continuations: list[tuple[int, bytes]],
                           out: list[list[ua.ReferenceDescription]]) -> None:
        while continuations:
            batch, continuations = (continuations[:self.limits.browse],
                                    continuations[self.limits.browse:])
            params = ua.BrowseNextParameters()
            params.ReleaseContinuationPoints = False
            params.ContinuationPoints = [cp for _, cp in batch]
            self.counters["browse_next_requests"] += 1
            results = await self.session.browse_next(params)
            for (k, _), res in zip(batch, results, strict=True):
                if res.StatusCode is not None and not res.StatusCode.is_good():
                    self.counters["browse_errors"] += 1
                    continue
                out[k].extend(res.References)
                if res.ContinuationPoint:
                    continuations.append((k, res.ContinuationPoint))

    async def _resolve_reftypes(self, reftypes: Iterable[ua.NodeId]) -> None:
        """Learn whether unknown (e.g. vendor) reference types are hierarchical by
        walking their HasSubtype chain up to a known one."""
        chains: dict[ua.NodeId, ua.NodeId] = {r: r for r in reftypes if r not in self._hier}
        for _ in range(16):
            if not chains:
                return
            cur = list(dict.fromkeys(chains.values()))
            results = await self._browse(cur, ua.BrowseDirection.Inverse, HAS_SUBTYPE)
            parent_of = {c: (refs[0].NodeId if refs else None) for c, refs in zip(cur, results,
                                                                                  strict=True)}
            for orig, at in list(chains.items()):
                parent = parent_of.get(at)
                if parent is None:
                    self._hier[orig] = False
                    del chains[orig]
                    continue
                p = node_id(parent.Identifier, parent.NamespaceIndex, parent.NodeIdType)
                if p in self._hier:
                    self._hier[orig] = self._hier[p]
                    del chains[orig]
                else:
                    chains[orig] = p
        for orig in chains:
            self._hier[orig] = False

    # -- read ----------------------------------------------------------------

    async def _read_attributes(self, nodes: list[_Found], grower: _Grower) -> None:
        """Every attribute of every node: the first request alone (it learns the
        server's real limit), the rest `PIPELINE` at a time, so the server answers one
        while TX decodes another."""
        wanted: list[tuple[_Found, int]] = []
        ends: list[int] = []  # per node: where its attributes end in `wanted`
        slices = Slices()
        live = self._live = grower.grow is not None  # the values go with the nodes
        for f in nodes:
            await slices()
            attrs: tuple[int, ...] = _COMMON + CLASS_ATTRS.get(f.node_class, ())
            if f.node_class == ua.NodeClass.Variable and (f.static or live):
                attrs += (A.Value,)
            wanted.extend((f, a) for a in attrs)
            ends.append(len(wanted))
        if not wanted:
            return
        grower.start(nodes, ends)
        first = self.limits.read
        await self._read_whole(wanted[:first], slices)
        grower.read(0, min(first, len(wanted)))
        step = self.limits.read  # halved by the first, if the server refused it

        async def one(start: int) -> None:
            await self._read_whole(wanted[start:start + step], slices)
            grower.read(start, min(start + step, len(wanted)))
        await _pipelined(one, list(range(first, len(wanted), step)), PIPELINE)

    async def _read_whole(self, batch: list[tuple[_Found, int]], slices: Slices) -> None:
        """One request for `batch`; halves that the server refused with
        BadTooManyOperations (and lowers the limit for the requests after it)."""
        params = ua.ReadParameters()
        share = self._share
        params.TimestampsToReturn = ua.TimestampsToReturn.Both if self._live \
            else ua.TimestampsToReturn.Neither
        params.NodesToRead = [_rv(f.nid, a) for f, a in batch]
        self.counters["read_requests"] += 1
        try:
            values = await read_raw(self.session, params)
        except ua.UaStatusCodeError as exc:
            if exc.code != ua.StatusCodes.BadTooManyOperations or len(batch) == 1:
                raise
            half = max(1, len(batch) // 2)
            self.limits.read = min(self.limits.read, half)
            for i in range(0, len(batch), half):
                await self._read_whole(batch[i:i + half], slices)
            return
        for (f, a), raw in zip(batch, values, strict=True):
            await slices()
            variant, code = raw[0], raw[1]
            if a == A.Value and not f.static:
                f.value = raw  # Bad too: the mirror shows the plant's status
                continue
            if code & 0xC0000000:  # not Good
                if a in (A.BrowseName, A.DisplayName):
                    self.counters["read_errors"] += 1
                continue
            if variant is not None:
                # one bytes object for the values many nodes have alike (a DataType, an
                # access level): a tenth of TX's memory in a crawl of 100,000 variables
                f.attrs[int(a)] = variant if a in _NAMES or len(variant) > 32 \
                    else share.setdefault(variant, variant)


def _duration(value: bytes | None) -> float:
    """A Duration attribute (a Double variant) in ms; 0 if absent or not a number (-1
    means "indeterminate" in the spec, which asks nothing of us either)."""
    if value is None:
        return 0.0
    try:
        v = variant_from_binary(Buffer(value)).Value
    except Exception:  # noqa: BLE001 - a server's odd encoding is not our failure
        return 0.0
    return float(v) if isinstance(v, int | float) and v > 0 else 0.0


def _live(f: _Found) -> bool:
    """An instance variable whose value is the plant's (not the model's): one to
    subscribe."""
    return (f.node_class == ua.NodeClass.Variable and not f.in_types and not f.static
            and _readable(f.attrs.get(A.AccessLevel)))


def _readable(access_level: bytes | None) -> bool:
    """CurrentRead set in an AccessLevel attribute (a Byte variant); True if unknown."""
    if access_level is None or len(access_level) < 2:
        return True
    return bool(access_level[1] & ua.AccessLevel.CurrentRead.mask)


async def _pipelined(request: Callable[[T], Awaitable[None]], items: list[T], turns: int
                     ) -> None:
    """`request(item)` for each item, at most `turns` of them in flight."""
    gate = asyncio.Semaphore(turns)

    async def one(item: T) -> None:
        async with gate:
            await request(item)
    await asyncio.gather(*(one(i) for i in items))


Grow = Callable[[Sequence[str], list[NodeRecord], list[tuple[str, RawValue]]], None]
PART_NODES = 1000  # nodes `grow` gets at a time (the last time, what is left)


def _record_of(f: _Found, strings: dict[ua.NodeId, str]) -> NodeRecord:
    """`f` as its record; `strings` keeps one string for a parent, reference type or
    type definition that many nodes name."""
    def shared(n: ua.NodeId | None) -> str | None:
        if n is None:
            return None
        text = strings.get(n)
        if text is None:
            text = strings[n] = n.to_string()
        return text
    return NodeRecord(
        f.nid.to_string(), int(f.node_class), shared(f.parent), shared(f.parent_ref),
        shared(f.type_def), f.attrs, tuple((r.to_string(), t.to_string()) for r, t in f.refs))


class _Grower:
    """Hands `grow` the nodes whose attributes are all read, in order, PART_NODES at a
    time: the read requests answer out of order, but a node goes only once every
    attribute before its own last one is in too."""

    def __init__(self, grow: Grow | None, built: list[NodeRecord], namespaces: Sequence[str],
                 strings: dict[ua.NodeId, str]) -> None:
        self.grow, self.built, self.namespaces, self.strings = grow, built, namespaces, strings
        self._nodes: list[_Found] = []
        self._ends: list[int] = []
        self._read: dict[int, int] = {}  # start -> end of the requests answered, not joined
        self._upto = 0                     # every attribute before this one is read
        self._ready = 0                    # nodes whose attributes all are
        self._sent = 0

    def start(self, nodes: list[_Found], ends: list[int]) -> None:
        self._nodes, self._ends = nodes, ends

    def read(self, start: int, end: int) -> None:
        if self.grow is None:
            return
        self._read[start] = end
        while self._upto in self._read:
            self._upto = self._read.pop(self._upto)
        ends = self._ends
        while self._ready < len(ends) and ends[self._ready] <= self._upto:
            self._ready += 1
        if self._ready - self._sent >= PART_NODES or (
                self._ready == len(ends) and self._ready > self._sent):
            ready = self._nodes[self._sent:self._ready]
            self._sent = self._ready
            records = [_record_of(f, self.strings) for f in ready]
            self.built.extend(records)
            values = [(r.node_id, f.value) for r, f in zip(records, ready, strict=True)
                      if f.value is not None and _live(f)]
            for f in ready:
                f.value = None  # the source holds it now
            self.grow(self.namespaces, records, values)
