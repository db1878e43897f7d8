"""TX's model cache file (agent/opcua/model_cache.py)."""

from __future__ import annotations

import stat
from pathlib import Path

from agent.opcua.fingerprint import Probe
from agent.opcua.model import ModelSnapshot, NodeRecord
from agent.opcua.model_cache import CachedModel, load, save

EP = "opc.tcp://192.0.2.10:4840"


def _cached() -> CachedModel:
    snap = ModelSnapshot(("http://opcfoundation.org/UA/", "urn:plant"),
                         (NodeRecord("ns=1;s=F", 1, "i=85", "i=35"),
                          NodeRecord("ns=1;s=V", 2, "ns=1;s=F", "i=47")))
    _, data = snap.encode()
    return CachedModel(EP, ("i=85",), data, ("ns=1;s=V",), {"ns=1;s=V": 500.0},
                       {"ns=1;s=F": b"\x01" * 12}, Probe(("ns=1;s=V",), ("ns=1;s=F",)), "ab" * 16)


def test_what_is_saved_loads_back_0600(tmp_path: Path) -> None:
    path = tmp_path / "data" / "plant.opcua-model"
    cached = _cached()
    save(path, cached)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load(path, EP, ("i=85",)) == cached
    version, snap = cached.snapshot()
    assert [n.node_id for n in snap.nodes] == ["ns=1;s=F", "ns=1;s=V"] and len(version) == 16


def test_another_endpoint_or_subtrees_or_a_damaged_file_means_a_crawl(tmp_path: Path) -> None:
    path = tmp_path / "plant.opcua-model"
    assert load(path, EP, ("i=85",)) is None  # none yet
    save(path, _cached())
    assert load(path, "opc.tcp://192.0.2.11:4840", ("i=85",)) is None
    assert load(path, EP, ("ns=1;s=F",)) is None
    path.write_bytes(path.read_bytes()[:40])
    assert load(path, EP, ("i=85",)) is None
    path.write_bytes(b"\xa1\x66format\x63old")
    assert load(path, EP, ("i=85",)) is None
