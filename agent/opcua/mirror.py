"""RX side: a read-only OPC UA server mirroring one TX OPC UA source.

```
OpcuaModel chunks ─► ModelAssembler ─► snapshot ─► diff with what is mirrored ─► delete / add / update nodes
                                                   (diff.py; namespace array copied: node ids are identical)
OpcuaModelPart ──► Growth (growth.py: one crawl, in order) ─► add its nodes now; at its end part,
                   the nodes grown make the version: served as that model
OpcuaNotifiers, OpcuaEvents ─► re-emitted from the same notifiers (agent/opcua/mirror_events.py)
OpcuaValues ─────► decode Variant ─► DataValue(value, status, source ts, server ts) ─► node + IT subscribers
                   (values for nodes the model has not brought yet wait, the last one per node)
                   ─► history (historized nodes: agent/opcua/history_store.py) ◄─ HistoryRead
set_link_state ──► quality: Good ─► UncertainLastUsableValue (value kept) ─► BadNoCommunication
                   after bad_after seconds; Good again with the next fresh value
                 ─► Objects/DiodeDiagnostics (link state, heartbeat age, counters)
```

IT clients may browse, read, subscribe and read history; every write, method call,
history update and node-management request is refused (agent/opcua/access.py),
writes and calls with one result per item (agent/opcua/services.py, which also
serves IndexRange and TimestampsToReturn as the spec says).

Namespaces: the mirror's NamespaceArray is the source's, index for index,
followed by the mirror's own diagnostics namespace, so a node id such as
``ns=2;s=Plant`` is the same on both sides. Index 1 is therefore the source
server's URI, not the mirror's application URI (which only names the mirror
in its endpoints and certificate).

Model changes are applied as a diff (agent/opcua/diff.py), so IT clients'
monitored items on nodes that did not change keep flowing, whatever else the
source changed. A changed namespace array is one more diff: namespaces are
matched by URI, a node whose namespace kept its index keeps its node id (an
appended namespace moves none), and only the nodes of namespaces that moved
are removed and added under their new ids. The diagnostics object moves only
when its namespace's index changes, i.e. when the source's array changes length.

Quality (a Bad status nulls the value: docs/ARCHITECTURE.md, "Traps in our
dependencies"): while the link or the
source is lost every value turns UncertainLastUsableValue with its value kept;
after `bad_after` seconds BadNoCommunication with a null value, as OPC UA
requires of Bad values. When the link returns, Bad values go back to
Uncertain with their last value until a fresh value (a change or the next
keyframe) makes them Good. Values arriving while the link counts as lost are
shown Uncertain. Nothing is degraded before the link was first seen healthy
(an RX that just started has nothing stale to flag).

Recovery: TX reports its source "connected" only once the values it read on
reconnecting are on the link, so when the link and source are healthy again
(RECOVER) the values that arrived during the outage are current and turn Good at
once; the others wait for their next fresh value. Static values (an instance's
properties that come with the model, such as a method's InputArguments) follow
the quality too, down to Uncertain only (a Bad status would null what is still
the model's value), and turn Good again at RECOVER; type properties (EnumStrings
of a DataType) describe types, not the plant, and stay as they are.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions

from agent import heap
from agent.adapter import Arrival, LinkView, SinkState
from agent.link.records import Record
from agent.loop_watch import Slices
from agent.opcua.access import ReadOnlyRuleset, ReadOnlyUserManager
from agent.opcua.browse import install as install_browse
from agent.opcua.build import YIELD_EVERY, A, Builder, decode_variant, nid, now_utc, set_value
from agent.opcua.certs import cert_der, key_der
from agent.opcua.codec import (
    OpcuaEvents,
    OpcuaModel,
    OpcuaModelPart,
    OpcuaNotifiers,
    OpcuaValue,
    OpcuaValues,
)
from agent.opcua.config import OpcuaMirrorConfig
from agent.opcua.diff import diff
from agent.opcua.expiry import ExpiryWatch
from agent.opcua.growth import Growth, decode_nodes
from agent.opcua.history_read import HistoryReader
from agent.opcua.history_store import HistoryStore
from agent.opcua.late import LateRecord, current_values, still_current
from agent.opcua.limits import start_bounded
from agent.opcua.mirror_events import MirrorEvents
from agent.opcua.mirror_events import prepare as prepare_events
from agent.opcua.model import ModelAssembler, ModelError, ModelSnapshot, NodeRecord, historized
from agent.opcua.quality import Action, Quality, QualityState
from agent.opcua.services import install as install_services
from agent.opcua.standard_space import StoredStandardServer, find_store
from agent.opcua.ua import data_value, node_id, status

log = logging.getLogger("diode.sink.opcua")

DIAG_NAMESPACE = "urn:diode:mirror:diagnostics"
HEALTHY_LINK = ("UP", "DEGRADED")
POLICY_TYPES = {
    "None": ua.SecurityPolicyType.NoSecurity,
    "Basic256Sha256_Sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
    "Basic256Sha256_SignAndEncrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    "Aes128_Sha256_RsaOaep_Sign": ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    "Aes128_Sha256_RsaOaep_SignAndEncrypt": ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    "Aes256_Sha256_RsaPss_Sign": ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
    "Aes256_Sha256_RsaPss_SignAndEncrypt": ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
}
UNCERTAIN = status(ua.StatusCodes.UncertainLastUsableValue)
BAD = status(ua.StatusCodes.BadNoCommunication)
WAITING = status(ua.StatusCodes.BadWaitingForInitialData)
MAX_EARLY_VALUES = 1_000_000
MAX_INBOX = 100_000  # records queued by submit()
HISTORY_FLUSH = 1.0  # seconds between two writes of the history (one transaction each)


# -- the mirror -------------------------------------------------------------------------


@dataclass
class _Var:
    node: Any                          # asyncua AttributeValue of the Value attribute
    fresh: ua.DataValue | None = None  # last value from the source
    level: int = 0                     # 0 as received, 1 uncertain, 2 bad
    episode: int = -1                  # the outage during which `fresh` arrived, if any
    static: bool = False               # its value comes with the model (a method's arguments)


# Node classes whose properties describe types, not the plant's state: never degraded.
_TYPE_CLASSES = (ua.NodeClass.ObjectType, ua.NodeClass.VariableType, ua.NodeClass.ReferenceType,
                 ua.NodeClass.DataType)


_DIAG_VARS: dict[str, tuple[Any, ua.VariantType]] = {
    "LinkState": ("UNKNOWN", ua.VariantType.String),
    "SourceState": ("unknown", ua.VariantType.String),
    "Quality": ("Good", ua.VariantType.String),
    "HeartbeatAge": (-1.0, ua.VariantType.Double),
    "ModelVersion": ("", ua.VariantType.String),
    "Nodes": (0, ua.VariantType.UInt32),
    "ValuesApplied": (0, ua.VariantType.UInt64),
    "Counters": ("{}", ua.VariantType.String),
}


class OpcuaMirror:
    def __init__(self, cfg: OpcuaMirrorConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.key = f"opcua:{cfg.name}"
        self.server: Server | None = None
        self.state = SinkState.STOPPED
        self.assembler = ModelAssembler()
        self.version: str | None = None
        self.namespaces: tuple[str, ...] = ()
        self._records: dict[str, NodeRecord] = {}
        self._growth = Growth()
        self._waiting: dict[str, tuple[tuple[str, str], ...]] = {}  # grown nodes' refs
        self._vars: dict[str, _Var] = {}
        self._statics: tuple[tuple[int, int], int] = ((-1, -1), 0)  # (key, count): all_counters
        self._early: dict[str, OpcuaValue] = {}
        self._builder: Builder | None = None
        self._events: MirrorEvents | None = None
        self._link_state = "UNKNOWN"
        self._source_state: str | None = None
        self._heartbeat_age: float | None = None
        self._tx_counters: dict[str, int] = {}
        self._quality = QualityState(cfg.bad_after)
        self._episode = 0  # outages so far; values that arrive during one are tagged with it
        self.expiry = ExpiryWatch(f"the mirror's OPC UA server certificate for '{cfg.name}'",
                                  cfg.cert_file, cfg.cert_warn_days,
                                  "make a new one (diode opcua-cert --server) and have the IT "
                                  "clients trust it", log) if cfg.cert_file is not None else None
        self._diag: dict[str, Any] = {}
        self._diag_ns = 0
        self._task: asyncio.Task[None] | None = None
        self._apply_task: asyncio.Task[None] | None = None
        self._inbox: deque[Record | LateRecord] = deque()
        self._inbox_event = asyncio.Event()
        self._drop_logged = 0.0
        self._lock = asyncio.Lock()
        self._history: HistoryStore | None = None
        self._historized: frozenset[str] = frozenset()
        self._history_task: asyncio.Task[None] | None = None
        self.counters: dict[str, int] = dict.fromkeys((
            "models_installed", "models_failed", "values_applied", "values_early", "values_unknown",
            "values_bad_variant", "records_other_source", "records_dropped", "late_superseded",
            "quality_changes", "model_parts", "model_parts_ignored", "model_parts_bad",
            "models_grown"), 0)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.cfg
        users = dict(cfg.users)
        iserver = StoredStandardServer(await find_store(), user_manager=ReadOnlyUserManager(
            cfg.allow_anonymous, users))
        server = Server(iserver=iserver)
        prepare_events(server)
        await server.init()
        server.allow_remote_admin(False)
        # RegisterServer skips the ruleset (it needs no session): refuse it here.
        setattr(server.iserver, "register_server", _refuse_register)  # noqa: B010
        server.set_endpoint(cfg.endpoint)
        server.set_server_name(cfg.server_name or f"diode mirror {cfg.name}")
        server.product_uri = "urn:diode:rx"
        server.manufacturer_name = "diode"
        await server.set_application_uri(cfg.application_uri or f"urn:diode:rx:{cfg.name}")
        server.set_security_policy([POLICY_TYPES[p] for p in cfg.security_policies],
                                   permission_ruleset=ReadOnlyRuleset())
        tokens: list[type] = []
        if cfg.allow_anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        if users:
            tokens.append(ua.UserNameIdentityToken)
        server.set_identity_tokens(tokens)
        if cfg.cert_file is not None and cfg.key_file is not None:
            await server.load_certificate(cert_der(cfg.cert_file))
            await server.load_private_key(key_der(cfg.key_file))
        if cfg.trusted_clients_dir is not None:
            store = TrustStore([Path(cfg.trusted_clients_dir)], [])
            await store.load()
            server.set_certificate_validator(CertificateValidator(
                CertificateValidatorOptions.TRUSTED_VALIDATION
                | CertificateValidatorOptions.PEER_CLIENT, store))
        if cfg.history_nodes:
            assert cfg.history_dir is not None  # the config or the sink factory sets it
            self._history = HistoryStore(cfg.history_dir, cfg.history_retention,
                                         cfg.history_max_bytes)
            await self._history.open()
        install_browse(server.iserver)
        install_services(server.iserver, HistoryReader(
            self._history, self._is_historized,
            cfg.history_max_values))
        if self.expiry is not None:
            self.expiry.tick(time.monotonic())  # at start; daily from the quality loop
        self.server = server
        self._builder = Builder(server.iserver)
        self._builder.compact_standard()
        self._events = MirrorEvents(server)
        await self._events.start()
        await self._serve_namespaces(tuple(await server.get_namespace_array()))
        await self._create_diagnostics()
        await start_bounded(server, cfg.name)  # bounded connections, sizes, time, logs
        self.state = SinkState.WAITING_MODEL
        self._task = asyncio.create_task(self._quality_loop(), name=f"opcua-mirror-{cfg.name}")
        self._apply_task = asyncio.create_task(self._apply_loop(), name=f"opcua-apply-{cfg.name}")
        if self._history is not None:
            self._history_task = asyncio.create_task(self._history_loop(),
                                                     name=f"opcua-history-{cfg.name}")
        heap.settle()  # the server and its standard address space
        log.info("OPC UA mirror '%s' listening on %s (%s)", cfg.name, cfg.endpoint,
                 ", ".join(cfg.security_policies))

    async def stop(self) -> None:
        for task in (self._task, self._apply_task, self._history_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._task = self._apply_task = self._history_task = None
        if self.server is not None:
            await self.server.stop()
            self.server = None
        if self._history is not None:
            await self._history.close()  # what is pending is written first
            self._history = None
        self.state = SinkState.STOPPED

    # -- records -----------------------------------------------------------------------

    def submit(self, record: Record, now: float = 0.0, arrival: Arrival = Arrival.LIVE,
               raw: bytes | None = None) -> bool:
        """Queue a record from synchronous code (the link receiver's callback); the
        mirror's own task applies it (a late one only where it is newer: late.py).
        False (counted, logged) when the queue is full."""
        if len(self._inbox) >= MAX_INBOX:
            self.counters["records_dropped"] += 1
            now = time.monotonic()
            if now - self._drop_logged > 5:
                self._drop_logged = now
                log.error("mirror '%s': %d records waiting; dropping (%d so far). This board "
                          "cannot apply OPC UA values as fast as they come: lower the source's "
                          "rate or narrow its subtrees", self.name, MAX_INBOX,
                          self.counters["records_dropped"])
            return False
        self._inbox.append(record if arrival is Arrival.LIVE else LateRecord(record, arrival))
        self._inbox_event.set()
        return True

    async def _apply_loop(self) -> None:
        inbox = self._inbox
        slices = Slices()  # a backlog of 100,000 values (a model just installed) takes seconds
        while True:
            await self._inbox_event.wait()
            self._inbox_event.clear()
            while inbox:
                await slices()
                try:
                    await self.apply(inbox.popleft())
                except Exception:  # bad input is counted by the parts; never stop applying
                    log.exception("mirror '%s': applying a record failed", self.name)

    async def apply(self, record: Record | LateRecord) -> None:
        """Take one OPC UA record from the link (others are ignored)."""
        if isinstance(record, LateRecord):
            late = still_current(record, current_values(self._vars), self.counters)
            if late is None:
                return
            record = late
        if isinstance(record, OpcuaValues):
            if record.source != self.name:
                self.counters["records_other_source"] += 1
                return
            await self._apply_values(record.values)
        elif isinstance(record, OpcuaEvents | OpcuaNotifiers):
            await self._apply_events(record)
        elif isinstance(record, OpcuaModelPart):
            await self._grow(record)
        elif isinstance(record, OpcuaModel):
            if record.source != self.name:
                self.counters["records_other_source"] += 1
                return
            collected = self.assembler.collect(record)
            # in a thread: decoding 100,000 nodes takes seconds the link must not wait
            done = None if collected is None else await asyncio.to_thread(
                self.assembler.decode, *collected)
            if done is not None:
                await self._serve(*done)

    async def _apply_events(self, record: OpcuaEvents | OpcuaNotifiers) -> None:
        if record.source != self.name:
            self.counters["records_other_source"] += 1
        elif self._events is None:
            return
        elif isinstance(record, OpcuaNotifiers):
            self._events.announce(record.notifiers)
        else:
            await self._events.emit(record.events)

    async def _apply_values(self, values: tuple[OpcuaValue, ...]) -> None:
        vars_ = self._vars
        applied = 0
        arrival = now_utc()
        history, kept = self._history, self._historized
        good = self._quality.arriving() == Quality.GOOD  # per record: it changes rarely
        for entry in values:
            v = vars_.get(entry[0])
            if v is None:
                self._keep_early(entry)
                continue
            try:
                dv = _datavalue(entry, arrival)
            except Exception:  # a variant that does not decode: TX bug or version skew
                self.counters["values_bad_variant"] += 1
                continue
            if history is not None and entry[0] in kept:
                _record(history, entry, dv)
            v.fresh = dv
            if not good:
                # While the link or source counts as lost: the value is new, but nothing
                # says it is current yet. TX says "connected" only once the values it read
                # on reconnecting are on the link, so at RECOVER these turn Good at once.
                v.episode = self._episode
                await self._degrade(v, 1, now_utc())
            else:
                v.level = 0
                await set_value(v.node, dv)
            applied += 1
        self.counters["values_applied"] += applied

    def _keep_early(self, entry: OpcuaValue) -> None:
        if self.version is not None and entry[0] in self._records:
            self.counters["values_unknown"] += 1  # in the model but not a variable
            return
        if len(self._early) >= MAX_EARLY_VALUES and entry[0] not in self._early:
            self.counters["values_unknown"] += 1
            return
        self._early[entry[0]] = entry
        self.counters["values_early"] += 1

    # -- model ---------------------------------------------------------------------------

    async def _serve(self, version: str, snap: ModelSnapshot) -> None:
        """Install a whole model (collected, or grown from parts) and serve it."""
        async with self._lock:
            try:
                await self._install(version, snap)
                if self._events is not None:
                    self._events.apply()  # the model built its objects with 0
            except Exception:
                # Take the next carousel copy of this version again.
                self.assembler.forget()
                self.counters["models_failed"] += 1
                raise

    async def _grow(self, part: OpcuaModelPart) -> None:
        """One part of a crawl in progress (growth.py): its nodes built now; at the end
        part, what grew is served as the model it names."""
        c, growth = self.counters, self._growth
        if part.source != self.name:
            c["records_other_source"] += 1
            return
        if self.version is not None or not growth.accept(part):
            c["model_parts_ignored"] += 1
            return
        if part.version:
            snap = growth.snapshot()
            version = await asyncio.to_thread(lambda: snap.version)
            if version != part.version:  # a TX bug: the carousel's snapshot will put it right
                c["model_parts_bad"] += 1
                growth.reset()
                log.warning("mirror '%s': the %d nodes grown from TX's crawl are not model "
                            "%s; waiting for the model itself", self.name, len(snap.nodes),
                            part.version)
                return
            await self._serve(version, snap)
            self.assembler.current = version  # its carousel copies are nothing new
            c["models_grown"] += 1
            return
        try:
            namespaces, nodes = await asyncio.to_thread(decode_nodes, part.data)
        except ModelError:
            c["model_parts_bad"] += 1
            growth.reset()
            return
        if not growth.add(namespaces, nodes):
            c["model_parts_bad"] += 1
            return
        builder = self._builder
        assert builder is not None
        async with self._lock:
            if namespaces != self.namespaces:
                await self._serve_namespaces(namespaces)
                self.namespaces = namespaces
            done = await builder.add(nodes)
            for rec in done:
                self._records[rec.node_id] = rec
            aspace = builder.aspace
            for rec in done:
                # a reference to a node of a later part waits for the model's install
                ready = [(r, t) for r, t in rec.refs if nid(t) in aspace and nid(r) in aspace]
                if len(ready) < len(rec.refs):
                    self._waiting[rec.node_id] = tuple(x for x in rec.refs if x not in ready)
                builder.add_refs(rec.node_id, ready, self._records)
            await self._bind_variables(done)
            heap.settle()
            self.state = SinkState.GROWING
        c["model_parts"] += 1

    async def _install(self, version: str, snap: ModelSnapshot) -> None:
        server, builder = self.server, self._builder
        assert server is not None and builder is not None
        started = time.monotonic()
        old = self._records
        # in a thread, as the decode: 100,000 nodes take seconds the link must not wait
        d = await asyncio.to_thread(diff, list(old.values()), self.namespaces, snap.nodes,
                                    snap.namespaces)
        if snap.namespaces != self.namespaces:
            if old:
                log.info("mirror '%s': the source's namespace array changed (%d -> %d "
                         "namespaces): nodes whose namespace moved get their new ids",
                         self.name, len(self.namespaces), len(snap.namespaces))
            await self._serve_namespaces(snap.namespaces)
            self.namespaces = snap.namespaces
        await builder.delete(d.removed)
        for nid_ in d.removed:
            old.pop(nid_, None)
            self._vars.pop(nid_, None)
        if self.cfg.diagnostics and not self._diag:
            await self._create_diagnostics()  # after the removals: its index may be theirs
        changed = list(d.changed)
        hist = historized(snap, self.cfg.history_nodes) if self._history is not None \
            else frozenset()
        done = await builder.add(list(d.added), hist)
        for rec in done:
            old[rec.node_id] = rec
        mirrored = {r.node_id for r in snap.nodes}
        for i, rec in enumerate(done):
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
            builder.add_refs(rec.node_id, rec.refs, mirrored)
        waiting, self._waiting = self._waiting, {}
        for source, refs in waiting.items():  # of nodes grown from parts (_grow)
            if source in mirrored:
                builder.add_refs(source, refs, mirrored)
        self._growth.reset()
        for i, (o, n) in enumerate(changed):
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
            await builder.update(o, n, mirrored, n.node_id in hist)
            old[n.node_id] = n
        for i, link in enumerate(d.relinks):
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
            builder.relink(link, mirrored)
        # A variable whose value no longer comes with the model: the source sends it now.
        live = [n for o, n in changed if A.Value in o.attrs and A.Value not in n.attrs]
        for n in live:
            self._vars.pop(n.node_id, None)
        fresh = {r.node_id for r in done}
        for n_id in hist ^ self._historized:  # moved into or out of a historized subtree
            if n_id not in fresh:
                builder.set_historized(n_id, n_id in hist)
        self._historized = hist
        # Keep the snapshot's order for a later rebuild (parents before children).
        self._records = {r.node_id: old[r.node_id] for r in snap.nodes if r.node_id in old}
        await self._bind_variables([*done, *live])
        self._early.clear()  # what is not in the model now has no node to wait for
        await self._bind_statics([n for _, n in changed if A.Value in n.attrs])
        self.version = version
        self.state = SinkState.SERVING
        self.counters["models_installed"] += 1
        await self._diag_write("ModelVersion", version)
        await self._diag_write("Nodes", len(self._records))
        heap.settle()
        log.info("mirror '%s': model %s installed in %.2f s: %d nodes (+%d -%d ~%d)", self.name,
                 version, time.monotonic() - started, len(self._records), len(done),
                 len(d.removed), len(changed))

    async def _bind_variables(self, recs: list[NodeRecord]) -> None:
        """Track the new variables without a static value; give them their early
        value (taken from those waiting), or BadWaitingForInitialData."""
        assert self.server is not None
        aspace = self.server.iserver.aspace
        stamp = now_utc()
        history = self._history
        for i, rec in enumerate(recs):
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
            if rec.node_class != ua.NodeClass.Variable:
                continue
            if A.Value in rec.attrs:
                await self._bind_statics([rec])
                continue
            nd = aspace.get(nid(rec.node_id))
            if nd is None or A.Value not in nd.attributes:
                continue
            v = _Var(nd.attributes[A.Value])
            self._vars[rec.node_id] = v
            entry = self._early.pop(rec.node_id, None)
            if entry is not None:
                try:
                    v.fresh = _datavalue(entry, stamp)
                except Exception:  # undecodable: as if it never came
                    self.counters["values_bad_variant"] += 1
                else:
                    if history is not None and rec.node_id in self._historized:
                        _record(history, entry, v.fresh)
            if v.fresh is not None:
                v.level = 0
                await set_value(v.node, v.fresh)
                if self._quality.level:
                    await self._degrade(v, self._quality.level, stamp)
            else:
                await set_value(v.node, data_value(ua.Variant(), WAITING, None, stamp))

    # -- history -----------------------------------------------------------------------

    def _is_historized(self, node_id: str) -> bool:
        return node_id in self._historized

    async def _history_loop(self) -> None:
        while True:
            await asyncio.sleep(HISTORY_FLUSH)
            if self._history is None:
                return
            try:
                await self._history.flush()
            except Exception:  # a full or broken disk: counted by the log, retried
                log.exception("mirror '%s': writing the history failed", self.name)
    async def _bind_statics(self, recs: list[NodeRecord]) -> None:
        """Track instance variables whose value came with the model (a method's
        InputArguments): they follow the mirror's quality like every value, so an IT
        client does not read Good from a source that is gone, but only down to
        Uncertain (their value is the model's, still the last known) and Good again only
        at RECOVER, when TX reports the source connected (its model checked again)."""
        assert self.server is not None
        aspace = self.server.iserver.aspace
        for rec in recs:
            if self._under_type(rec):
                continue
            nd = aspace.get(nid(rec.node_id))
            if nd is None or A.Value not in nd.attributes:
                continue
            av = nd.attributes[A.Value]
            v = self._vars[rec.node_id] = _Var(av, av.value, static=True)
            if self._quality.level:
                await self._degrade(v, 1, now_utc())

    def _under_type(self, rec: NodeRecord) -> bool:
        """Whether a type (not an instance) holds this node, through its parents."""
        seen = 0
        parent = rec.parent
        while parent is not None and seen < 64:
            p = self._records.get(parent)
            if p is None:
                return False
            if p.node_class in _TYPE_CLASSES:
                return True
            parent, seen = p.parent, seen + 1
        return False

    # -- quality -----------------------------------------------------------------------

    async def set_link_state(self, link_state: str, *, source_state: str | None = None,
                             heartbeat_age: float | None = None,
                             counters: Mapping[str, int] | None = None) -> None:
        """What the agent knows: link state UP/DEGRADED/DOWN (DOWN or UNKNOWN lose the
        values' quality), the TX source's state from the heartbeat (anything but
        "connected" loses it too), the heartbeat age, TX's counters."""
        self._link_state = link_state
        if source_state is not None:
            self._source_state = source_state
        self._heartbeat_age = heartbeat_age
        if counters is not None:
            self._tx_counters = dict(counters)
        await self._update_quality(time.monotonic())
        await self._update_diagnostics()

    @property
    def healthy(self) -> bool:
        return self._link_state in HEALTHY_LINK and self._source_state in (None, "connected")

    async def _quality_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            if self.expiry is not None:
                self.expiry.tick(time.monotonic())
            try:
                await self._update_quality(time.monotonic())
                await self._update_diagnostics()
            except Exception:  # the loop must survive anything one round hits
                log.exception("mirror '%s': quality update failed", self.name)

    async def _update_quality(self, now: float) -> None:
        """One step of the quality table (agent/opcua/quality.py), applied to the values."""
        q = self._quality
        newly_lost = q.unhealthy_since is None
        action = q.step(self.healthy, now)
        if action == Action.RECOVER:
            log.info("mirror '%s': link and source back; values turn Good as fresh "
                     "values arrive", self.name)
            await self._set_level(Quality.GOOD, recovering=True)
        elif action == Action.DEGRADE:
            assert q.unhealthy_since is not None
            if newly_lost:
                log.warning("mirror '%s': link %s, source %s: values turn Uncertain",
                            self.name, self._link_state, self._source_state)
            if q.level == Quality.BAD:
                log.warning("mirror '%s': no data for %.0f s: values turn BadNoCommunication",
                            self.name, now - q.unhealthy_since)
            await self._set_level(q.level)

    async def _set_level(self, level: int, recovering: bool = False) -> None:
        """Degrade every value to `level` (a static one to Uncertain at most); or,
        `recovering`: Good again for static values and for values that arrived during
        this outage (read by TX's new session), Bad ones lifted to Uncertain (each turns
        Good with its next fresh value)."""
        stamp = now_utc()
        episode = self._episode
        async with self._lock:
            for i, v in enumerate(list(self._vars.values())):
                if i % YIELD_EVERY == YIELD_EVERY - 1:
                    await asyncio.sleep(0)
                if v.fresh is None:
                    continue
                if recovering:
                    if v.static or v.episode == episode:
                        if v.level:
                            v.level = 0
                            await set_value(v.node, v.fresh)
                    elif v.level == 2:  # back from Bad: the last value, but not Good yet
                        await self._degrade(v, 1, stamp)
                else:
                    target = min(level, 1) if v.static else level
                    if v.level < target:
                        await self._degrade(v, target, stamp)
            if recovering:
                self._episode += 1
        self.counters["quality_changes"] += 1

    async def _degrade(self, v: _Var, level: int, stamp: Any) -> None:
        fresh = v.fresh
        assert fresh is not None
        v.level = level
        if level == 1:
            if fresh.StatusCode is not None and fresh.StatusCode.is_bad():
                await set_value(v.node, fresh)  # Bad at the source: nothing usable to keep
                return
            dv = data_value(fresh.Value, UNCERTAIN, fresh.SourceTimestamp, stamp)
        else:
            dv = data_value(ua.Variant(), BAD, fresh.SourceTimestamp, stamp)
        await set_value(v.node, dv)

    # -- diagnostics -----------------------------------------------------------------

    async def _serve_namespaces(self, source: tuple[str, ...]) -> None:
        """Serve the source's NamespaceArray, index for index, and the mirror's own
        namespace after it. The diagnostics object keeps its node id while its namespace
        keeps its index (the source's array kept its length); when the source appends or
        removes namespaces the index is another's now, so the object goes (IT clients'
        items on it see BadNodeIdUnknown) and is made again at the new last index."""
        assert self.server is not None
        served = list(source)
        if self.cfg.diagnostics and DIAG_NAMESPACE not in served:
            served.append(DIAG_NAMESPACE)
        if self._diag and (DIAG_NAMESPACE not in served
                           or served.index(DIAG_NAMESPACE) != self._diag_ns):
            await self._delete_diagnostics()
        await self.server.write_attribute_value(
            node_id(ua.ObjectIds.Server_NamespaceArray),
            ua.DataValue(ua.Variant(served, ua.VariantType.String)))

    async def _create_diagnostics(self) -> None:
        """Objects/DiodeDiagnostics in the mirror's namespace, as served now."""
        if not self.cfg.diagnostics or self.server is None:
            return
        server = self.server
        ns = self._diag_ns = list(await server.get_namespace_array()).index(DIAG_NAMESPACE)
        folder = await server.nodes.objects.add_object(node_id("DiodeDiagnostics", ns),
                                                       ua.QualifiedName("DiodeDiagnostics", ns))
        self._diag = {}
        for name, (value, vtype) in _DIAG_VARS.items():
            node = await folder.add_variable(node_id(f"DiodeDiagnostics.{name}", ns),
                                             ua.QualifiedName(name, ns), value, vtype)
            self._diag[name] = node.nodeid
        await self._update_diagnostics()
        if self.version is not None:
            await self._diag_write("ModelVersion", self.version)
            await self._diag_write("Nodes", len(self._records))

    async def _delete_diagnostics(self) -> None:
        if not self._diag or self._builder is None:
            return
        ns = self._diag_ns
        await self._builder.delete([node_id(f"DiodeDiagnostics.{n}", ns).to_string()
                                    for n in self._diag]
                                   + [node_id("DiodeDiagnostics", ns).to_string()])
        self._diag = {}

    async def _diag_write(self, name: str, value: Any) -> None:
        node = self._diag.get(name)
        if node is None or self.server is None:
            return
        vtype = _DIAG_VARS[name][1]
        await self.server.write_attribute_value(
            node, data_value(ua.Variant(value, vtype), None, now_utc(), now_utc()))

    async def _update_diagnostics(self) -> None:
        if not self._diag:
            return
        await self._diag_write("LinkState", self._link_state)
        await self._diag_write("SourceState", self._source_state or "unknown")
        await self._diag_write("Quality", ("Good", "Uncertain", "Bad")[self._quality.level])
        await self._diag_write("HeartbeatAge", float(self._heartbeat_age)
                               if self._heartbeat_age is not None else -1.0)
        await self._diag_write("ValuesApplied", self.counters["values_applied"])
        counters = {**{f"mirror.{k}": v for k, v in self.all_counters().items()},
                    **{f"tx.{k}": v for k, v in self._tx_counters.items()}}
        await self._diag_write("Counters", json.dumps(counters, sort_keys=True))

    # -- the sink contract (agent/adapter.py) ---------------------------------------------

    def tick(self) -> None:
        pass  # the mirror's own tasks apply records and keep the quality

    def dropped(self) -> int:
        return self.counters["records_dropped"]

    def status(self) -> dict[str, Any]:
        out = {"state": self.state, **self.all_counters()}
        if self.expiry is not None:
            out.update(self.expiry.status())
        return out

    async def on_link(self, link: LinkView) -> None:
        await self.set_link_state(link.state, source_state=link.tx_sources.get(self.key),
                                  heartbeat_age=link.heartbeat_age, counters=link.tx_counters)

    def all_counters(self) -> dict[str, int]:
        out = dict(self.counters)
        out.update(self.assembler.counters)
        if self._builder is not None:
            out.update(self._builder.counters)
        if self._events is not None:
            out.update(self._events.status())
        if self._history is not None:
            out.update(self._history.counters)
            out["history_nodes"] = len(self._historized)
        # counted again only when the variables changed: a status every 0.2 s must not
        # walk 100,000 of them (static ones come and go only with a model)
        key = (self.counters["models_installed"], len(self._vars))
        if key != self._statics[0]:
            self._statics = (key, sum(v.static for v in self._vars.values()))
        statics = self._statics[1]
        out["variables"] = len(self._vars) - statics  # those the source sends values for
        out["static_values"] = statics
        return out


def _refuse_register(server: Any, conf: Any = None) -> None:
    raise ServiceError(ua.StatusCodes.BadUserAccessDenied)


def _datavalue(entry: OpcuaValue, arrival: Any) -> ua.DataValue:
    """The DataValue IT clients get. ServerTimestamp: the plant server's, or, when it
    sent none (or 1601-01-01, OPC UA's "no time"), when the value reached the mirror,
    the mirror being the server the client talks to."""
    _, vbytes, code, src, srv = entry
    return data_value(decode_variant(vbytes), status(code),
                      ua.win_epoch_to_datetime(src) if src is not None else None,
                      ua.win_epoch_to_datetime(srv) if srv else arrival)


def _record(history: HistoryStore, entry: OpcuaValue, dv: ua.DataValue) -> None:
    """Keep a value as it crossed the diode, with the ServerTimestamp served."""
    srv = entry[4] or ua.datetime_to_win_epoch(dv.ServerTimestamp or now_utc())
    history.record(entry[0], entry[1], entry[2], entry[3], srv, srv)
