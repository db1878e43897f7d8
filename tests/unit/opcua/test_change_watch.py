"""The cheap check for model changes (agent/opcua/change_watch.py) against the
crawler's in-memory server."""

from __future__ import annotations

import asyncio

from agent.opcua.change_watch import CHECK_CONTAINERS, ChangeWatch
from agent.opcua.crawl import Crawler, Limits

from .test_model import FakeSession, _n

NAMESPACES = ["http://opcfoundation.org/UA/", "urn:s", "urn:plant"]


def _watched() -> tuple[FakeSession, ChangeWatch, Limits]:
    session = FakeSession()
    limits = Limits(browse=3, read=50, monitored=10)
    result = asyncio.run(Crawler(session, limits).crawl([_n("i=85")], NAMESPACES))
    return session, ChangeWatch(result.snapshot, result.children), limits


def _checks(session: FakeSession, watch: ChangeWatch, limits: Limits, n: int,
            namespaces: list[str] = NAMESPACES) -> list[str | None]:
    return [asyncio.run(watch.check(session, limits, namespaces)) for _ in range(n)]


def test_an_unchanged_server_passes_every_check() -> None:
    session, watch, limits = _watched()
    assert "ns=2;s=Folder" in watch.containers and watch.containers[0] == "i=85"
    browses, reads = session.calls["browse"], session.calls["read"]
    # what the crawl saw is the baseline: no request until the first check
    assert _checks(session, watch, limits, 10) == [None] * 10
    assert session.calls["read"] > reads and session.calls["browse"] > browses


def test_an_added_variable_is_seen_within_one_pass() -> None:
    session, watch, limits = _watched()
    session.refs.append(("ns=2;s=Folder", 47, "ns=2;s=New", 2, "New"))
    session.nodes["ns=2;s=New"] = (2, "New")
    passes = -(-len(watch.containers) // CHECK_CONTAINERS)
    seen = [r for r in _checks(session, watch, limits, passes) if r is not None]
    assert seen == ["the children of ns=2;s=Folder changed"]


def test_a_renamed_node_and_a_new_namespace_are_seen() -> None:
    session, watch, limits = _watched()
    session.nodes["ns=2;s=V7"] = (2, "Renamed")
    seen = [r for r in _checks(session, watch, limits, 5) if r is not None]
    assert seen and seen[0] == "ns=2;s=V7 changed its BrowseName", seen
    assert _checks(session, watch, limits, 1, [*NAMESPACES, "urn:new"]) == [
        "its namespace array changed"]


def test_a_difference_is_reported_once() -> None:
    session, watch, limits = _watched()
    session.nodes["ns=2;s=V7"] = (2, "Renamed")
    session.refs.append(("ns=2;s=Folder", 47, "ns=2;s=New", 2, "New"))
    seen = [r for r in _checks(session, watch, limits, 40) if r is not None]
    # each difference once, then taken as the baseline (a crawl that does not confirm it
    # must not be asked for again and again)
    assert sorted(seen) == ["ns=2;s=V7 changed its BrowseName",
                            "the children of ns=2;s=Folder changed"], seen
