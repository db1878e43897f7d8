"""OPC UA pieces that need no server: records, the model snapshot and its chunks,
the crawler against a fake session (continuation points, operation limits,
vendor reference types), and the config readers."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config_reader import Table
from agent.errors import ConfigError
from agent.link import records
from agent.opcua import codec as opcua_codec
from agent.opcua import config as opcua_config
from agent.opcua.crawl import Crawler, Limits
from agent.opcua.model import ModelAssembler, ModelError, ModelSnapshot, NodeRecord, split
from agent.opcua.source import entry_of
from agent.opcua.ua import node_id, status

# -- records ---------------------------------------------------------------------------


def test_opcua_records_round_trip() -> None:
    model = opcua_codec.OpcuaModel("plant", "0123456789abcdef", 2, 5, b"\x00chunk")
    values = opcua_codec.OpcuaValues("plant", True, (
        ("ns=2;s=A", b"\x0b" + bytes(8), 0, 133_000_000_000_000_000, None),
        ("i=2258", b"\x00", 0x80310000, None, 5)))
    for rec in (model, values):
        assert records.decode(records.encode(rec)) == rec


@pytest.mark.parametrize("item", [
    [3, "plant", "v", 5, 5, b""],             # index out of range
    [3, "plant", 1, 0, 1, b""],               # version not a string
    [4, "plant", False, [["n", b"", 0, None]]],          # entry too short
    [4, "plant", False, [["n", "not bytes", 0, None, None]]],
    [4, "plant", False, [["n", b"", 0, 1.5, None]]],     # float timestamp
    [4, "plant", False, "nope"],
])
def test_malformed_opcua_records_are_record_errors(item: list[Any]) -> None:
    with pytest.raises(records.RecordError):
        records.decode_item(item)


def test_entry_of_keeps_status_and_timestamps() -> None:
    from datetime import UTC, datetime
    t = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    dv = ua.DataValue(ua.Variant(1.5, ua.VariantType.Double),
                      StatusCode=status(ua.StatusCodes.UncertainLastUsableValue),
                      SourceTimestamp=t, ServerTimestamp=None)  # type: ignore[arg-type]
    nid, variant, code, src, srv = entry_of("ns=2;s=X", dv)
    assert nid == "ns=2;s=X" and code == ua.StatusCodes.UncertainLastUsableValue
    assert ua.win_epoch_to_datetime(src) == t and srv is None
    from agent.opcua.build import decode_variant
    assert decode_variant(variant) == dv.Value


# -- snapshot and chunks -----------------------------------------------------------------


def snapshot(n: int, seed: int = 1) -> ModelSnapshot:
    rng = random.Random(seed)
    nodes = [NodeRecord("ns=2;s=Root", 1, "i=85", "i=35", "i=61", {3: b"\x14\x02\x00\x04\x00Root"})]
    for i in range(n):
        nodes.append(NodeRecord(f"ns=2;s=V{i}", 2, "ns=2;s=Root", "i=47", "i=63",
                                {13: rng.randbytes(rng.randrange(1, 40)), 15: b"\x06\xff\xff\xff\xff"},
                                (("i=37", "i=78"),)))
    return ModelSnapshot(("http://opcfoundation.org/UA/", "urn:x", "urn:plant"), tuple(nodes))


def test_snapshot_round_trip_and_stable_version() -> None:
    snap = snapshot(200)
    version, data = snap.encode()
    assert version == snap.version == snapshot(200).version
    assert version != snapshot(201).version
    v2, back = ModelSnapshot.decode(data)
    assert (v2, back) == (version, snap)
    with pytest.raises(ModelError):
        ModelSnapshot.decode(b"not zlib")


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), chunk=st.integers(64, 4096), loss=st.floats(0, 0.5))
def test_assembler_heals_across_carousel_rounds(seed: int, chunk: int, loss: float) -> None:
    """Chunks arrive shuffled, duplicated and lossy; carousel rounds fill the gaps."""
    rng = random.Random(seed)
    snap = snapshot(300, seed)
    chunks = snap.chunks("plant", chunk)
    asm = ModelAssembler()
    got = None
    for _ in range(50):
        batch = [c for c in chunks if rng.random() >= loss] + rng.sample(chunks, min(3, len(chunks)))
        rng.shuffle(batch)
        for c in batch:
            r = asm.add(c)
            if r is not None:
                assert got is None  # complete exactly once; later copies are ignored
                got = r
        if got is not None:
            break
    assert got == (snap.version, snap)
    assert asm.add(chunks[0]) is None and asm.counters["model_chunks_ignored"] >= 1


def test_assembler_counts_a_corrupt_model_and_keeps_two_versions() -> None:
    asm = ModelAssembler(max_versions=2)
    bad = split("p", "0000000000000000", b"garbage", 4)
    for c in bad:
        assert asm.add(c) is None
    assert asm.counters["models_bad"] == 1
    a, b, c = (snapshot(10, s).chunks("p", 64) for s in (1, 2, 3))
    asm.add(a[0])
    asm.add(b[0])
    asm.add(c[0])  # pushes a out
    assert asm.counters["model_versions_dropped"] == 1
    for ch in b[1:]:
        r = asm.add(ch)
    assert r is not None and r[0] == snapshot(10, 2).version


# -- the crawler against a fake server -----------------------------------------------------

HIER = {33, 35, 45, 46, 47, 500}


def _n(s: str) -> ua.NodeId:
    return ua.NodeId.from_string(s)


class FakeSession:
    """An address space that pages references (4 per call, continuation points) and
    refuses requests with more than 3 nodes, like a small embedded server."""

    MAX_NODES = 3
    PAGE = 4

    def __init__(self) -> None:
        self.refs: list[tuple[str, int, str, int, str]] = []  # src, reftype, target, class, name
        self.nodes: dict[str, tuple[int, str]] = {"i=86": (1, "Types"), "i=85": (1, "Objects"),
                                                  "i=90": (1, "DataTypes"), "i=24": (64, "Base"),
                                                  "i=22": (64, "Structure")}

        def add(src: str, rt: int, dst: str, cls: int, name: str) -> None:
            self.refs.append((src, rt, dst, cls, name))
            self.nodes.setdefault(dst, (cls, name))
        add("i=86", 35, "i=90", 1, "DataTypes")
        add("i=90", 35, "i=24", 64, "Base")
        add("i=24", 45, "i=22", 64, "Structure")
        add("i=22", 45, "ns=2;i=100", 64, "MyStruct")
        add("ns=2;i=100", 38, "ns=2;i=101", 1, "Default Binary")
        add("ns=2;i=101", 40, "i=76", 8, "DataTypeEncodingType")
        add("i=85", 35, "ns=2;s=Folder", 1, "Folder")
        add("i=85", 35, "i=2253", 1, "Server")
        add("ns=2;s=Folder", 40, "i=61", 8, "FolderType")
        for k in range(25):
            add("ns=2;s=Folder", 47, f"ns=2;s=V{k}", 2, f"V{k}")
            add(f"ns=2;s=V{k}", 40, "i=63", 16, "BaseDataVariableType")
        add("ns=2;s=Folder", 500, "ns=2;s=Extra", 2, "Extra")      # vendor ref, subtype of 47
        add("ns=2;s=Folder", 501, "ns=2;s=V0", 2, "V0")             # vendor ref, non-hierarchical
        add("i=47", 45, "ns=2;i=500", 32, "HasVendorPart")
        add("i=32", 45, "ns=2;i=501", 32, "VendorLink")
        self.cps: dict[bytes, list[ua.ReferenceDescription]] = {}
        self.calls = {"browse": 0, "browse_next": 0, "read": 0, "refused": 0}

    def _desc(self, rt: int, dst: str, cls: int, name: str, fwd: bool) -> ua.ReferenceDescription:
        d = ua.ReferenceDescription()
        d.ReferenceTypeId = node_id(rt, 2 if rt >= 500 else 0)
        d.NodeId = _n(dst)
        d.IsForward = fwd
        d.NodeClass = ua.NodeClass(cls)
        d.BrowseName = ua.QualifiedName(name, _n(dst).NamespaceIndex)
        d.DisplayName = ua.LocalizedText(name)
        return d

    def _page(self, refs: list[ua.ReferenceDescription]) -> ua.BrowseResult:
        res = ua.BrowseResult()
        res.References = refs[:self.PAGE]
        if len(refs) > self.PAGE:
            cp = random.randbytes(8)
            self.cps[cp] = refs[self.PAGE:]
            res.ContinuationPoint = cp
        return res

    async def browse(self, params: ua.BrowseParameters) -> list[ua.BrowseResult]:
        self.calls["browse"] += 1
        if len(params.NodesToBrowse) > self.MAX_NODES:
            self.calls["refused"] += 1
            raise ua.UaStatusCodeError(ua.StatusCodes.BadTooManyOperations)
        out = []
        for desc in params.NodesToBrowse:
            key = desc.NodeId.to_string()
            rt_filter = desc.ReferenceTypeId
            found = []
            for src, rt, dst, cls, name in self.refs:
                if rt_filter.Identifier == 33 and rt not in HIER:
                    continue
                if rt_filter.Identifier == 45 and rt != 45:
                    continue
                if desc.BrowseDirection == ua.BrowseDirection.Forward and src == key:
                    found.append(self._desc(rt, dst, cls, name, True))
                elif desc.BrowseDirection == ua.BrowseDirection.Inverse and dst == key:
                    scls, sname = self.nodes.get(src, (1, src))
                    found.append(self._desc(rt, src, scls, sname, False))
            out.append(self._page(found))
        return out

    async def browse_next(self, params: ua.BrowseNextParameters) -> list[ua.BrowseResult]:
        self.calls["browse_next"] += 1
        return [self._page(self.cps.pop(cp)) for cp in params.ContinuationPoints]

    async def read(self, params: ua.ReadParameters) -> list[ua.DataValue]:
        self.calls["read"] += 1
        if len(params.NodesToRead) > 50:
            raise ua.UaStatusCodeError(ua.StatusCodes.BadTooManyOperations)
        out = []
        for rv in params.NodesToRead:
            cls, name = self.nodes.get(rv.NodeId.to_string(), (0, "?"))
            a = rv.AttributeId
            v: ua.Variant | None = None
            if a == ua.AttributeIds.BrowseName:
                v = ua.Variant(ua.QualifiedName(name, rv.NodeId.NamespaceIndex))
            elif a == ua.AttributeIds.DisplayName:
                v = ua.Variant(ua.LocalizedText(name))
            elif a == ua.AttributeIds.NodeClass:
                v = ua.Variant(cls, ua.VariantType.Int32)
            elif a == ua.AttributeIds.AccessLevel:
                v = ua.Variant(0 if name == "V3" else 1, ua.VariantType.Byte)
            elif a == ua.AttributeIds.DataType:
                v = ua.Variant(node_id(11), ua.VariantType.NodeId)
            elif a == ua.AttributeIds.MinimumSamplingInterval and name in ("V5", "V6"):
                v = ua.Variant(500.0 if name == "V5" else -1.0, ua.VariantType.Double)
            out.append(ua.DataValue(v) if v is not None else
                       ua.DataValue(StatusCode=status(ua.StatusCodes.BadAttributeIdInvalid)))
        return out


def test_crawler_follows_continuation_points_and_limits() -> None:
    session = FakeSession()
    crawler = Crawler(session, Limits(browse=100, read=1000, monitored=10))
    result = asyncio.run(crawler.crawl([_n("i=85")], ["http://opcfoundation.org/UA/", "urn:s",
                                                       "urn:plant"]))
    ids = [n.node_id for n in result.snapshot.nodes]
    # Types first, parents before children; namespace 0 never copied.
    assert ids[:2] == ["ns=2;i=100", "ns=2;i=101"]
    assert set(ids) == {"ns=2;i=100", "ns=2;i=101", "ns=2;s=Folder", "ns=2;s=Extra",
                        *(f"ns=2;s=V{k}" for k in range(25))}
    nodes = {n.node_id: n for n in result.snapshot.nodes}
    assert (nodes["ns=2;i=100"].parent, nodes["ns=2;i=100"].parent_ref) == ("i=22", "i=45")
    assert (nodes["ns=2;i=101"].parent, nodes["ns=2;i=101"].parent_ref) == ("ns=2;i=100", "i=38")
    assert (nodes["ns=2;s=V24"].parent, nodes["ns=2;s=V24"].type_def) == ("ns=2;s=Folder", "i=63")
    # The vendor subtype of HasComponent made Extra a child; the other vendor ref is a ref.
    assert nodes["ns=2;s=Extra"].parent_ref == "ns=2;i=500"
    assert ("ns=2;i=501", "ns=2;s=V0") in nodes["ns=2;s=Folder"].refs
    # 25 children at 4 per page needed BrowseNext; the refused big requests were halved.
    assert session.calls["browse_next"] > 0 and session.calls["refused"] > 0
    assert crawler.limits.browse <= FakeSession.MAX_NODES and crawler.limits.read <= 50
    # V3 has no CurrentRead: not subscribed. Type-part nodes never are.
    assert "ns=2;s=V3" not in result.variables and "ns=2;s=Extra" in result.variables
    assert len(result.variables) == 25
    # V5 cannot be sampled faster than 500 ms; V6's -1 ("indeterminate") asks nothing
    assert result.min_sampling == {"ns=2;s=V5": 500.0}


def test_limits_from_server_values() -> None:
    assert Limits.from_server([0, None, 50]) == Limits(1000, 5000, 50, 0)
    assert Limits.from_server([0, 0, 0]).monitored == 1000
    assert Limits.from_server([10**9, 7, 1]).browse == 10000
    # MaxMonitoredItemsPerSubscription: 0 or absent is "no limit"
    assert Limits.from_server([0, 0, 0, 2000]).per_subscription == 2000
    assert Limits.from_server([0, 0, 0, 0]).per_subscription == 0


# -- configuration -------------------------------------------------------------------------


def parse_opcua_source(table: dict[str, Any], path: Path,
                       where: str = "opcua") -> opcua_config.OpcuaSourceConfig:
    t = Table(path, where, table)
    cfg = opcua_config.parse_source(t)
    t.done()
    return cfg


def parse_opcua_mirror(table: dict[str, Any], path: Path,
                       where: str = "opcua") -> opcua_config.OpcuaMirrorConfig:
    t = Table(path, where, table)
    cfg = opcua_config.parse_mirror(t)
    t.done()
    return cfg


def test_mirror_policy_names_map_to_asyncua() -> None:
    from agent.opcua.mirror import POLICY_TYPES
    from agent.opcua.source import SECURITY_MODES, SECURITY_POLICIES
    from agent.opcua.subscriptions import TRIGGERS
    assert tuple(POLICY_TYPES) == opcua_config.MIRROR_POLICIES
    assert tuple(SECURITY_POLICIES) == opcua_config.SECURITY_POLICIES
    assert tuple(SECURITY_MODES) == opcua_config.SECURITY_MODES
    assert tuple(TRIGGERS) == opcua_config.TRIGGERS


def test_source_config_defaults_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "tx.toml"
    cfg = parse_opcua_source({"name": "plant", "endpoint": "opc.tcp://h:4840"}, f)
    assert cfg.subtrees == ("i=85",) and cfg.application_uri == "urn:diode:tx:plant"
    cases = [
        ({"name": "p"}, "endpoint: missing"),
        ({"name": "p", "endpoint": "http://x"}, "opc.tcp://"),
        ({"name": "p", "endpoint": "opc.tcp://h", "security_policy": "Basic256Sha256"},
         "needs a client certificate"),
        ({"name": "p", "endpoint": "opc.tcp://h", "security_policy": "Basic128"}, "must be one of"),
        ({"name": "p", "endpoint": "opc.tcp://h", "subtrees": ["ns=2;q=1"]}, "is not a node id"),
        ({"name": "p", "endpoint": "opc.tcp://h", "pasword": "x"}, "did you mean 'password'"),
        ({"name": "p", "endpoint": "opc.tcp://h", "password": "x"}, "no username"),
        ({"name": "p", "endpoint": "opc.tcp://h", "security_mode": "Sign"}, "security_policy is None"),
    ]
    for table, words in cases:
        with pytest.raises(ConfigError) as err:
            parse_opcua_source(table, f, "opcua.0")
        assert words in str(err.value) and "Fix:" in str(err.value) and "[opcua.0]" in str(err.value)


def test_mirror_config_defaults_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "rx.toml"
    cfg = parse_opcua_mirror({"name": "plant", "users": {"op": "pw"}}, f)
    assert cfg.security_policies == ("None",) and cfg.users == (("op", "pw"),)
    assert "pw" not in repr(cfg)
    empty = tmp_path / "trusted"
    empty.mkdir()
    cases = [
        ({"name": "p", "allow_anonymous": False}, "nobody could log in"),
        ({"name": "p", "security_policies": ["Basic256Sha256_SignAndEncrypt"]},
         "need a server certificate"),
        ({"name": "p", "security_policies": ["Basic256"]}, "expected a non-empty list"),
        ({"name": "p", "bad_after": -1}, "between"),
        ({"name": "p", "trusted_clients_dir": "nope"}, "not a folder"),
        ({"name": "p", "trusted_clients_dir": str(empty)}, "holds no certificate"),
    ]
    for table, words in cases:
        with pytest.raises(ConfigError) as err:
            parse_opcua_mirror(table, f)
        assert words in str(err.value) and "Fix:" in str(err.value)
