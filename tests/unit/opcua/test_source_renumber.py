"""TX after the server's NamespaceArray changed: the values it holds follow their node
to its new id, and a monitored item whose id names another node now is dropped at once
(agent/opcua/source.py `_renumber`, agent/opcua/subscriptions.py `renumbered`). No
server: the crawl result is handed in."""

from __future__ import annotations

from agent.opcua.codec import OpcuaModel, OpcuaValues
from agent.opcua.config import OpcuaSourceConfig
from agent.opcua.crawl import CrawlResult, Limits
from agent.opcua.model import ModelSnapshot, NodeRecord
from agent.opcua.source import OpcuaSource
from agent.opcua.subscriptions import Monitoring

UA = "http://opcfoundation.org/UA/"
BEFORE = (UA, "urn:src", "urn:plant", "urn:extra")
AFTER = (UA, "urn:src", "urn:plant", "urn:new", "urn:extra")  # urn:extra moved 3 -> 4


def _result(namespaces: tuple[str, ...], variables: list[str]) -> CrawlResult:
    nodes = tuple(NodeRecord(v, 2, "i=85", "i=35") for v in variables)
    return CrawlResult(ModelSnapshot(namespaces, nodes), variables, {})


def test_held_values_and_items_follow_the_namespace_array() -> None:
    src = OpcuaSource(OpcuaSourceConfig("plant", "opc.tcp://192.0.2.10:4840"))
    src._install(_result(BEFORE, ["ns=2;s=P", "ns=3;s=E"]))
    src._live.clear()
    watch = src._monitoring = Monitoring(None, src.cfg, Limits(), src.budget, iter(()),
                                         src.counters, src._on_changes, src._on_model_event,
                                         src._on_status)
    for nid, handle in (("ns=2;s=P", 1), ("ns=3;s=E", 2)):
        watch.handle_of[nid], watch.node_of[handle] = handle, nid
    p, e = ("ns=2;s=P", b"p", 0, None, None), ("ns=3;s=E", b"e", 0, None, None)
    src._pending.extend([p, e])
    src._queued += 2
    src._last.update({"ns=2;s=P": p, "ns=3;s=E": e})

    # ns=3;s=E names urn:new's node now; urn:extra's E is ns=4;s=E.
    src._install(_result(AFTER, ["ns=2;s=P", "ns=3;s=E", "ns=4;s=E"]))
    moved = ("ns=4;s=E", b"e", 0, None, None)
    assert list(src._pending) == [p, moved]
    assert src._last == {"ns=2;s=P": p, "ns=4;s=E": moved}
    assert watch._stale == {"ns=3;s=E"}
    assert watch.node_of == {1: "ns=2;s=P"}  # E's item counts no more under the old id
    # The new model goes out first, then the values under their new ids.
    out = src._take(100)
    assert all(isinstance(r, OpcuaModel) for r in out[:-1])
    assert isinstance(out[-1], OpcuaValues) and out[-1].values == (p, moved)


def test_a_namespace_gone_drops_its_values() -> None:
    src = OpcuaSource(OpcuaSourceConfig("plant", "opc.tcp://192.0.2.10:4840"))
    src._install(_result(BEFORE, ["ns=2;s=P", "ns=3;s=E"]))
    e = ("ns=3;s=E", b"e", 0, None, None)
    src._pending.append(e)
    src._queued += 1
    src._last["ns=3;s=E"] = e
    src._install(_result(BEFORE[:3], ["ns=2;s=P"]))
    assert not src._pending and not src._last
    assert src._taken == src._queued  # nothing left that "connected" would wait for
