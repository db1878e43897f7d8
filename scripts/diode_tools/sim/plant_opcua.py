"""A simulated OPC UA plant (asyncua server) for tests, the demo and benches.

Address space (namespace ``urn:diode:plant``, string node ids)::

    Objects/Plant                               Folder
      Area000 .. AreaNNN                        Folders of 100 variables each
        Area000.V00000 ..                       Double, value-changing
      Special                                   one of each interesting kind
        Int32, UInt16, Boolean, String, DateTime, ByteString     scalars
        DoubleArray[10], Int32Array[5], StringArray[3]           arrays
        MotorState                              custom enumeration MotorStateEnum
        Setpoint                                custom structure PumpSetpoint
        Writable                                Double with write access (the mirror must refuse)
        Reset()                                 a method (the mirror must refuse calls)
      Added                                     nodes added at runtime (`add_variable`,
                                                and `Extra.Value` of each namespace added)
      Boiler                                    with ``--events SECONDS`` only: an event notifier
        Boiler.HighTemperature                  an AlarmConditionType instance (its ConditionId)
      Quiet                                     with ``--events``: an object that emits nothing

With ``--events SECONDS`` the Boiler emits, every SECONDS, a BoilerEventType event
(custom, ns 2, BaseEventType's subtype with the properties Temperature and Batch)
and a transition of its HighTemperature alarm (AlarmConditionType: active with
severity 700 and retained, then inactive with severity 100 and not retained, in
turn); each prints ``EVENT <k>``.

Values change at `rate` changes per second in total, written inside the server
in bulk (one AttributeService.write per tick, as the server's own admin
session), never through a client. Timestamps are set by the plant so tests
can compare them across the diode; Special.Int32's SourceTimestamp has a digit
below the microsecond (100 ns ticks; agent/opcua/ticks.py): (value % 9) + 1.

Run it standalone (the tests run it as a separate process, so the custom
structure classes it registers do not leak into the test process)::

    python -m diode_tools.sim.plant_opcua --port 4840 --variables 10000 --rate 10000

Security (for commissioning tests): ``--cert FILE --key FILE`` adds the secure
endpoints (``--policy``, repeatable; ``--no-none`` drops the open one), and
``--trusted-dir DIR`` makes the plant refuse at CreateSession every client
certificate not in DIR (BadCertificateUntrusted) or outside its validity
(BadCertificateTimeInvalid), as plant servers do; with ``--refuse-at-open
error|close`` it refuses an untrusted one already at OpenSecureChannel, with an
ERR message (BadSecurityChecksFailed) or by just closing the connection, as many
other servers do. DIR is read at each session,
so "trust it on the server" is copying the certificate file into DIR.

It prints ``READY opc.tcp://...`` when listening. SIGUSR1 adds a variable
under Plant/Added, SIGUSR2 removes the last added one, SIGHUP pauses or
resumes the value changes; each prints ``ADDED <node id>``, ``REMOVED <node
id>``, ``PAUSED`` or ``RESUMED``. `PlantProcess` runs it that way for tests.

Namespace changes come as lines on stdin (a signal carries no URI), each
answered with ``NAMESPACES <JSON array>``, the NamespaceArray after it:

- ``append-namespace URI``: URI becomes the last namespace, with one String
  variable ``ns=<its index>;s=Extra.Value`` under Plant/Added whose value names
  its URI (``"URI k"``, k counting ticks), so a client sees which namespace a
  value comes from.
- ``insert-namespace URI BEFORE``: URI is inserted before BEFORE, one of the
  namespaces appended so; those from BEFORE on move up one index, their
  Extra.Value nodes are recreated under their new node ids, and URI gets an
  Extra.Value of its own, under the node id BEFORE's had (the same string now
  names another node). The plant's own namespace cannot move: its nodes stay.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from asyncua import Server, ua
from asyncua.common.structures104 import new_enum, new_struct, new_struct_field
from asyncua.common.utils import ServiceError
from asyncua.server.uaprocessor import UaProcessor
from asyncua.ua.ua_binary import uatcp_to_binary
from cryptography import x509

from agent.opcua.certs import cert_der, key_der, load_certificate, thumbprint_of
from agent.opcua.ticks import TickTime
from agent.opcua.ua import data_value, node_id, status

NAMESPACE = "urn:diode:plant"
EXTRA = "Extra.Value"  # the variable of each namespace added at runtime
PER_FOLDER = 100
MOTOR_STATES = ("Stopped", "Running", "Fault")


def variable_id(i: int) -> str:
    return f"Area{i // PER_FOLDER:03d}.V{i:05d}"


@dataclass(frozen=True)
class PlantSecurity:
    """The plant's own certificate, the policies it offers, whom it trusts."""
    cert: Path
    key: Path
    policies: tuple[str, ...] = ("Basic256Sha256_SignAndEncrypt",)
    offer_none: bool = True
    trusted_dir: Path | None = None  # None: any client certificate
    # Refuse an untrusted certificate already at OpenSecureChannel, as many servers do
    # (asyncua itself checks only at CreateSession): "error" answers an ERR message
    # BadSecurityChecksFailed and closes, "close" just closes the connection.
    refuse_at_open: str | None = None


class TrustDir:
    """A certificate validator trusting the certificates in a folder, read at every
    session (so trusting a client is copying its certificate there, no restart)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _trusted(self) -> set[str]:
        out = set()
        for p in self.folder.iterdir():
            try:
                out.add(thumbprint_of(load_certificate(p)))
            except (OSError, ValueError):
                continue
        return out

    def trusts(self, der: bytes) -> bool:
        return thumbprint_of(x509.load_der_x509_certificate(der)) in self._trusted()

    async def __call__(self, cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        now = datetime.now(UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise ServiceError(ua.StatusCodes.BadCertificateTimeInvalid)
        if thumbprint_of(cert) not in self._trusted():
            raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)


def refuse_at_open(trust: TrustDir, how: str) -> None:
    """Make this process's asyncua servers refuse untrusted client certificates in
    OpenSecureChannel (see PlantSecurity.refuse_at_open). The simulator is its own
    process, so patching asyncua's processor here touches nothing else."""
    original = UaProcessor.open_secure_channel

    def open_secure_channel(self: UaProcessor, algohdr: Any, seqhdr: Any, body: Any) -> None:
        cert = getattr(algohdr, "SenderCertificate", None)
        if cert and not trust.trusts(cert):
            if how == "error":
                err = ua.ErrorMessage(status(ua.StatusCodes.BadSecurityChecksFailed),
                                      cast(Any, "certificate not trusted"))
                self._transport.write(uatcp_to_binary(cast(Any, ua.MessageType.Error), err))
            self._transport.close()
            return
        original(self, algohdr, seqhdr, body)

    UaProcessor.open_secure_channel = open_secure_channel  # type: ignore[method-assign]


class PlantOpcua:
    def __init__(self, port: int, variables: int = 1000, rate: float = 1000.0,
                 host: str = "127.0.0.1", tick: float = 0.05, seed: int = 7,
                 security: PlantSecurity | None = None, events: float = 0.0) -> None:
        self.endpoint = f"opc.tcp://{host}:{port}/plant/"
        self.security = security
        self.events = events
        self.events_sent = 0
        self._event_gens: tuple[Any, Any] | None = None
        self.variables = variables
        self.rate = rate
        self.tick = tick
        self.changes = 0
        self.paused = False
        self.server = Server()
        self.ns = 0
        self.ids: list[ua.NodeId] = []
        self.added: list[ua.NodeId] = []
        self.extra: dict[str, ua.NodeId] = {}  # namespace added at runtime -> its Extra.Value
        self._rng = random.Random(seed)
        self._task: asyncio.Task[None] | None = None
        self._event_task: asyncio.Task[None] | None = None
        self._special: dict[str, ua.NodeId] = {}

    async def start(self) -> None:
        server = self.server
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("diode plant simulator")
        sec = self.security
        if sec is None:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            policies = [getattr(ua.SecurityPolicyType, p) for p in sec.policies]
            if sec.offer_none:
                policies.insert(0, ua.SecurityPolicyType.NoSecurity)
            server.set_security_policy(policies)
            await server.load_certificate(cert_der(sec.cert))
            await server.load_private_key(key_der(sec.key))
            if sec.trusted_dir is not None:
                trust = TrustDir(sec.trusted_dir)
                server.set_certificate_validator(trust)
                if sec.refuse_at_open is not None:
                    refuse_at_open(trust, sec.refuse_at_open)
        # Keep the plant's timestamps: clients writing are not ours, the loop is.
        self.ns = ns = await server.register_namespace(NAMESPACE)
        objects = server.nodes.objects
        plant = await objects.add_folder(node_id("Plant", ns), ua.QualifiedName("Plant", ns))
        for a in range(math.ceil(self.variables / PER_FOLDER)):
            await plant.add_folder(node_id(f"Area{a:03d}", ns), ua.QualifiedName(f"Area{a:03d}", ns))
        folders = {f"Area{a:03d}": node_id(f"Area{a:03d}", ns)
                   for a in range(math.ceil(self.variables / PER_FOLDER))}
        # Bulk creation through the internal node management service: a folder of
        # 10,000 add_variable calls takes far longer than one AddNodes call.
        items = []
        for i in range(self.variables):
            nid = node_id(variable_id(i), ns)
            self.ids.append(nid)
            items.append(_variable_item(nid, ua.QualifiedName(f"V{i:05d}", ns),
                                        folders[f"Area{i // PER_FOLDER:03d}"],
                                        ua.Variant(float(i), ua.VariantType.Double),
                                        node_id(ua.ObjectIds.Double)))
        for res in server.iserver.node_mgt_service.add_nodes(items):
            res.StatusCode.check()
        await self._add_special(plant, ns)
        await plant.add_folder(node_id("Added", ns), ua.QualifiedName("Added", ns))
        if self.events:
            await self._add_events(plant, ns)
        await server.start()
        self._task = asyncio.create_task(self._run())
        if self.events:
            self._event_task = asyncio.create_task(self._emit_events())

    async def _add_events(self, plant: Any, ns: int) -> None:
        server = self.server
        boiler = await plant.add_object(node_id("Boiler", ns), ua.QualifiedName("Boiler", ns))
        await plant.add_object(node_id("Quiet", ns), ua.QualifiedName("Quiet", ns))
        etype = await server.create_custom_event_type(
            ns, "BoilerEventType", ua.ObjectIds.BaseEventType,
            [("Temperature", ua.VariantType.Double), ("Batch", ua.VariantType.String)])
        await boiler.add_object(node_id("Boiler.HighTemperature", ns),
                                ua.QualifiedName("HighTemperature", ns),
                                objecttype=ua.ObjectIds.AlarmConditionType)
        self._event_gens = (await server.get_event_generator(etype, boiler),
                            await server.get_event_generator(ua.ObjectIds.AlarmConditionType,
                                                             boiler))

    async def emit_event(self) -> int:
        """One BoilerEventType event and one transition of the alarm; returns k."""
        assert self._event_gens is not None
        k = self.events_sent = self.events_sent + 1
        boiler, alarm = self._event_gens
        ev = boiler.event
        ev.Temperature, ev.Batch, ev.Severity = 80.0 + k, f"batch-{k}", 300
        await boiler.trigger(message=f"boiler event {k}")
        a = alarm.event
        active = k % 2 == 1
        a.ConditionName = "HighTemperature"
        a.NodeId = node_id("Boiler.HighTemperature", self.ns)
        a.Retain = active
        a.Severity = 700 if active else 100
        a.LastSeverity = 100 if active else 700
        a.EnabledState = ua.LocalizedText("Enabled")
        setattr(a, "EnabledState/Id", True)
        a.ActiveState = ua.LocalizedText("Active" if active else "Inactive")
        setattr(a, "ActiveState/Id", active)
        a.AckedState = ua.LocalizedText("Unacknowledged")
        setattr(a, "AckedState/Id", False)
        await alarm.trigger(message=f"high temperature {k}" if active
                            else f"temperature normal {k}")
        return k

    async def _emit_events(self) -> None:
        while True:
            await asyncio.sleep(self.events)
            print(f"EVENT {await self.emit_event()}", flush=True)

    async def _add_special(self, plant: Any, ns: int) -> None:
        server = self.server
        special = await plant.add_folder(node_id("Special", ns), ua.QualifiedName("Special", ns))
        enum_node = await new_enum(server, ns, "MotorStateEnum", list(MOTOR_STATES))
        struct_node, _ = await new_struct(server, ns, "PumpSetpoint", [
            new_struct_field("Speed", ua.VariantType.Double),
            new_struct_field("Enabled", ua.VariantType.Boolean),
            new_struct_field("Name", ua.VariantType.String),
            new_struct_field("Limits", ua.VariantType.Double, array=True),
        ])
        await server.load_data_type_definitions()
        sp = self._special

        async def var(name: str, value: Any, vtype: ua.VariantType | None = None,
                      datatype: ua.NodeId | None = None) -> Any:
            node = await special.add_variable(node_id(f"Special.{name}", ns),
                                              ua.QualifiedName(name, ns), value, vtype, datatype)
            sp[name] = node.nodeid
            return node

        await var("Int32", 0, ua.VariantType.Int32)
        await var("UInt16", 0, ua.VariantType.UInt16)
        await var("Boolean", False, ua.VariantType.Boolean)
        await var("String", "hello", ua.VariantType.String)
        await var("DateTime", datetime.now(UTC), ua.VariantType.DateTime)
        await var("ByteString", b"\x00\x01", ua.VariantType.ByteString)
        for name, value, vt in (("DoubleArray", [0.0] * 10, ua.VariantType.Double),
                                ("Int32Array", [0] * 5, ua.VariantType.Int32),
                                ("StringArray", ["a", "b", "c"], ua.VariantType.String)):
            node = await var(name, value, vt)
            await node.write_value_rank(ua.ValueRank.OneDimension)
            await node.write_array_dimensions([len(value)])
        await var("MotorState", ua.Variant(1, ua.VariantType.Int32), datatype=enum_node.nodeid)
        await var("Setpoint", ua.Variant(self._setpoint(0), ua.VariantType.ExtensionObject),
                  datatype=struct_node.nodeid)
        writable = await var("Writable", 1.5, ua.VariantType.Double)
        await writable.set_writable()

        async def reset(parent: ua.NodeId) -> list[ua.Variant]:
            return [ua.Variant(True, ua.VariantType.Boolean)]

        await special.add_method(node_id("Special.Reset", ns), ua.QualifiedName("Reset", ns),
                                 reset, [], [ua.VariantType.Boolean])

    @staticmethod
    def _setpoint(k: int) -> Any:
        cls = ua.PumpSetpoint  # type: ignore[attr-defined]
        return cls(Speed=float(k % 1000), Enabled=k % 2 == 0, Name=f"pump-{k}",
                   Limits=[0.0, float(k % 100)])

    # -- runtime ---------------------------------------------------------------

    async def add_variable(self, name: str | None = None) -> str:
        """Add a Double variable under Plant/Added while running; returns its node id."""
        n = len(self.added)
        name = name or f"Added{n:03d}"
        parent = self.server.get_node(node_id("Added", self.ns))
        node = await parent.add_variable(node_id(f"Added.{name}", self.ns),
                                         ua.QualifiedName(name, self.ns), float(n),
                                         ua.VariantType.Double)
        self.added.append(node.nodeid)
        return node.nodeid.to_string()

    async def remove_last_added(self) -> str | None:
        if not self.added:
            return None
        nid = self.added.pop()
        await self.server.delete_nodes([self.server.get_node(nid)])
        return nid.to_string()

    async def append_namespace(self, uri: str) -> list[str]:
        """Add `uri` as the last namespace, with its Extra.Value; the new NamespaceArray."""
        ns = await self.server.register_namespace(uri)
        if uri not in self.extra:
            await self._add_extra(uri, ns)
        return list(await self.server.get_namespace_array())

    async def insert_namespace(self, uri: str, before: str) -> list[str]:
        """Insert `uri` before `before` (a namespace `append_namespace` added): the
        namespaces from `before` on move up one index (as a server does when an
        information model is loaded before others); the new NamespaceArray."""
        uris = list(await self.server.get_namespace_array())
        if uri in uris or before not in self.extra:
            raise ValueError(f"cannot insert {uri} before {before}")
        at = uris.index(before)
        moved = uris[at:]
        await self.server.delete_nodes([self.server.get_node(self.extra.pop(u)) for u in moved
                                        if u in self.extra])
        uris.insert(at, uri)
        await self.server.nodes.namespace_array.write_value(uris)
        for u in [uri, *moved]:
            await self._add_extra(u, uris.index(u))
        return uris

    async def _add_extra(self, uri: str, ns: int) -> None:
        parent = self.server.get_node(node_id("Added", self.ns))
        node = await parent.add_variable(node_id(EXTRA, ns), ua.QualifiedName("Value", ns),
                                         f"{uri} 0", ua.VariantType.String)
        self.extra[uri] = node.nodeid

    def _bulk(self, writes: list[tuple[ua.NodeId, ua.Variant]]) -> ua.WriteParameters:
        now = datetime.now(UTC)
        params = ua.WriteParameters()
        for nid, variant in writes:
            wv = ua.WriteValue()
            wv.NodeId = nid
            wv.AttributeId = ua.AttributeIds.Value
            wv.Value = data_value(variant, None, now, now)
            params.NodesToWrite.append(wv)
        return params

    async def write_tick(self, count: int) -> None:
        """Change `count` variables (round robin) plus the special ones, in one bulk write."""
        writes: list[tuple[ua.NodeId, ua.Variant]] = []
        rng = self._rng
        n = len(self.ids)
        for _ in range(count if n else 0):
            idx = self.changes % n
            writes.append((self.ids[idx], ua.Variant(round(rng.uniform(0, 100), 3),
                                                     ua.VariantType.Double)))
            self.changes += 1
        k = self.changes
        sp = self._special
        if sp:
            writes += [
                (sp["Int32"], ua.Variant(k % 100000, ua.VariantType.Int32)),
                (sp["UInt16"], ua.Variant(k % 65536, ua.VariantType.UInt16)),
                (sp["Boolean"], ua.Variant(k % 2 == 0, ua.VariantType.Boolean)),
                (sp["String"], ua.Variant(f"s{k}", ua.VariantType.String)),
                (sp["DateTime"], ua.Variant(datetime.now(UTC), ua.VariantType.DateTime)),
                (sp["ByteString"], ua.Variant(k.to_bytes(4, "big"), ua.VariantType.ByteString)),
                (sp["DoubleArray"], ua.Variant([float(k + j) for j in range(10)],
                                               ua.VariantType.Double)),
                (sp["Int32Array"], ua.Variant([k + j for j in range(5)], ua.VariantType.Int32)),
                (sp["StringArray"], ua.Variant([f"{k}a", f"{k}b", f"{k}c"], ua.VariantType.String)),
                (sp["MotorState"], ua.Variant(k % len(MOTOR_STATES), ua.VariantType.Int32)),
                (sp["Setpoint"], ua.Variant(self._setpoint(k), ua.VariantType.ExtensionObject)),
            ]
        for nid in self.added:
            writes.append((nid, ua.Variant(float(k), ua.VariantType.Double)))
        for uri, nid in self.extra.items():
            writes.append((nid, ua.Variant(f"{uri} {k}", ua.VariantType.String)))
        params = self._bulk(writes)
        if sp:  # a SourceTimestamp only 100 ns ticks can carry
            wv = next(w for w in params.NodesToWrite if w.NodeId == sp["Int32"])
            base = wv.Value.SourceTimestamp
            wv.Value = dataclasses.replace(wv.Value, SourceTimestamp=TickTime.of(
                base, ua.datetime_to_win_epoch(base) + (k % 100000) % 9 + 1))
        # The server's own admin session: a bulk internal write, no client involved.
        for code in await self.server.iserver.attribute_service.write(params):
            if not code.is_good():
                logging.getLogger("plant").warning("write refused: %s", code)

    async def _run(self) -> None:
        start = time.monotonic()
        done = 0
        while True:
            await asyncio.sleep(self.tick)
            if self.paused:
                start, done = time.monotonic(), 0
                continue
            due = int((time.monotonic() - start) * self.rate)
            count = min(due - done, max(1, len(self.ids)))
            done = due
            await self.write_tick(max(count, 0))

    async def stop(self) -> None:
        for task in (self._task, self._event_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self.server.stop()


def _variable_item(nid: ua.NodeId, name: ua.QualifiedName, parent: ua.NodeId,
                   value: ua.Variant, datatype: ua.NodeId) -> ua.AddNodesItem:
    attrs = ua.VariableAttributes()
    attrs.DisplayName = ua.LocalizedText(name.Name)
    attrs.Description = ua.LocalizedText(f"simulated {name.Name}")
    attrs.Value = value
    attrs.DataType = datatype
    attrs.ValueRank = ua.ValueRank.Scalar
    attrs.AccessLevel = attrs.UserAccessLevel = ua.AccessLevel.CurrentRead.mask
    attrs.SpecifiedAttributes = (
        ua.NodeAttributesMask.DisplayName | ua.NodeAttributesMask.Description
        | ua.NodeAttributesMask.Value | ua.NodeAttributesMask.DataType
        | ua.NodeAttributesMask.ValueRank | ua.NodeAttributesMask.AccessLevel
        | ua.NodeAttributesMask.UserAccessLevel)
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = nid
    item.BrowseName = name
    item.NodeClass = ua.NodeClass.Variable
    item.ParentNodeId = parent
    item.ReferenceTypeId = node_id(ua.ObjectIds.HasComponent)
    item.TypeDefinition = node_id(ua.ObjectIds.BaseDataVariableType)
    item.NodeAttributes = attrs
    return item


class PlantProcess:
    """The plant simulator as a child process (`python -m diode_tools.sim.plant_opcua`)."""

    def __init__(self, port: int, variables: int = 1000, rate: float = 1000.0,
                 host: str = "127.0.0.1", security: PlantSecurity | None = None,
                 events: float = 0.0) -> None:
        self.endpoint = f"opc.tcp://{host}:{port}/plant/"
        self.port, self.variables, self.rate, self.host = port, variables, rate, host
        self.security, self.events = security, events
        args = [sys.executable, "-m", "diode_tools.sim.plant_opcua", "--host", host, "--port",
                str(port), "--variables", str(variables), "--rate", str(rate)]
        if events:
            args += ["--events", str(events)]
        if security is not None:
            args += ["--cert", str(security.cert), "--key", str(security.key)]
            for p in security.policies:
                args += ["--policy", p]
            if not security.offer_none:
                args.append("--no-none")
            if security.trusted_dir is not None:
                args += ["--trusted-dir", str(security.trusted_dir)]
            if security.refuse_at_open is not None:
                args += ["--refuse-at-open", security.refuse_at_open]
        self._proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True)
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.expect("READY", 60)

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line.strip())

    def expect(self, word: str, timeout: float = 10.0) -> str:
        """The rest of the next output line starting with `word`."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self._proc.poll() is not None:
                raise RuntimeError(f"plant simulator: no {word} line (exit {self._proc.poll()})")
            try:
                line = self._lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if line.startswith(word):
                return line[len(word):].strip()

    def _signal(self, sig: int, word: str) -> str:
        self._proc.send_signal(sig)
        return self.expect(word)

    def add_variable(self) -> str:
        return self._signal(signal.SIGUSR1, "ADDED")

    def remove_last_added(self) -> str:
        return self._signal(signal.SIGUSR2, "REMOVED")

    def _command(self, line: str) -> list[str]:
        assert self._proc.stdin is not None
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()
        out = json.loads(self.expect("NAMESPACES"))
        if not isinstance(out, list):
            raise RuntimeError(f"plant simulator: {line!r} failed: {out}")
        return [str(u) for u in out]

    def append_namespace(self, uri: str) -> list[str]:
        """The plant's NamespaceArray once `uri` is appended (module docstring)."""
        return self._command(f"append-namespace {uri}")

    def insert_namespace(self, uri: str, before: str) -> list[str]:
        """The plant's NamespaceArray once `uri` is inserted before `before`."""
        return self._command(f"insert-namespace {uri} {before}")

    def pause(self) -> None:
        self._signal(signal.SIGHUP, "PAUSED")

    def resume(self) -> None:
        self._signal(signal.SIGHUP, "RESUMED")

    def restarted(self) -> PlantProcess:
        """A new plant process on the same port, with the same address space."""
        return PlantProcess(self.port, self.variables, self.rate, self.host, self.security,
                            self.events)

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


async def _main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="plant_opcua", description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=4840)
    ap.add_argument("--variables", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=1000.0, help="value changes per second")
    ap.add_argument("--cert", type=Path, help="the plant's certificate: secure endpoints")
    ap.add_argument("--key", type=Path, help="its key")
    ap.add_argument("--policy", action="append", help="e.g. Basic256Sha256_SignAndEncrypt")
    ap.add_argument("--no-none", action="store_true", help="no endpoint without security")
    ap.add_argument("--trusted-dir", type=Path, help="trust only client certificates here")
    ap.add_argument("--refuse-at-open", choices=("error", "close"),
                    help="refuse untrusted certificates at OpenSecureChannel")
    ap.add_argument("--events", type=float, default=0.0,
                    help="seconds between two events and alarm transitions (0: none)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    security = None
    if args.cert is not None:
        security = PlantSecurity(args.cert, args.key, tuple(args.policy or
                                                             ("Basic256Sha256_SignAndEncrypt",)),
                                 not args.no_none, args.trusted_dir, args.refuse_at_open)
    plant = PlantOpcua(args.port, args.variables, args.rate, host=args.host, security=security,
                       events=args.events)
    await plant.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def spawn(coro: Any, word: str) -> None:
        async def run() -> None:
            print(f"{word} {await coro}", flush=True)
        asyncio.ensure_future(run())

    loop.add_signal_handler(signal.SIGUSR1, lambda: spawn(plant.add_variable(), "ADDED"))
    loop.add_signal_handler(signal.SIGUSR2, lambda: spawn(plant.remove_last_added(), "REMOVED"))

    def toggle() -> None:
        plant.paused = not plant.paused
        print("PAUSED" if plant.paused else "RESUMED", flush=True)

    loop.add_signal_handler(signal.SIGHUP, toggle)

    async def command(line: str) -> None:
        words = line.split()
        try:
            if words[:1] == ["append-namespace"] and len(words) == 2:
                out: Any = await plant.append_namespace(words[1])
            elif words[:1] == ["insert-namespace"] and len(words) == 3:
                out = await plant.insert_namespace(words[1], words[2])
            else:
                raise ValueError(f"unknown command {line!r}")
        except Exception as exc:  # answered, so the caller fails with the reason
            out = str(exc)
        print(f"NAMESPACES {json.dumps(out)}", flush=True)

    def read_commands() -> None:
        for line in sys.stdin:
            if line.strip():
                asyncio.run_coroutine_threadsafe(command(line.strip()), loop).result()

    threading.Thread(target=read_commands, daemon=True).start()
    print(f"READY {plant.endpoint}", flush=True)
    await stop.wait()
    await plant.stop()


if __name__ == "__main__":
    try:
        asyncio.run(_main())
    except KeyboardInterrupt:
        sys.exit(0)
