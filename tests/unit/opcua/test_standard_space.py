"""The standard address space read from its store (agent/opcua/standard_space.py): the
same nodes as asyncua's in-memory one, a store checked at every start and rebuilt when
it is not whole, builds that race, and where RX looks for it."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import stat
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from asyncua import Server, ua
from asyncua.server.address_space import ViewService

from agent.opcua import standard_space as ss
from agent.opcua.browse import browse
from agent.opcua.ua import node_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cache") / ss.KEY
    assert ss.build(path, shared=False) > 5000
    return path


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _timeless(v: Any) -> Any:
    if isinstance(v, datetime):
        return None
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return dataclasses.replace(v, **{f.name: _timeless(getattr(v, f.name))
                                         for f in dataclasses.fields(v) if f.init})
    return v


def _attrs(nd: Any) -> dict[Any, Any]:
    """What a client reads of a node, but the clocks: two servers started apart."""
    return {a: (_timeless(v.value.Value), v.value.StatusCode) if v.value is not None else None
            for a, v in nd.attributes.items()}


def test_a_private_store_is_its_users_alone(store: Path) -> None:
    assert ss.problem(store) is None
    assert _mode(store) == 0o700
    assert {p.name for p in store.iterdir()} == {*ss.FILES, ss.MANIFEST}
    assert {_mode(p) for p in store.iterdir()} == {0o600}


def test_the_venvs_store_is_readable_by_the_agents_user(tmp_path: Path) -> None:
    path = tmp_path / "share" / ss.KEY
    ss.build(path, shared=True)
    assert _mode(path) == 0o755 and {_mode(p) for p in path.iterdir()} == {0o644}


def test_a_stored_standard_space_serves_what_asyncuas_own_does(store: Path) -> None:
    async def main() -> None:
        ours = Server(iserver=ss.StoredStandardServer(store))
        theirs = Server()
        await ours.init()
        await theirs.init()
        a, b = ours.iserver.aspace, theirs.iserver.aspace
        assert len(a._nodes) < 100  # read from the file only when asked for
        every = list(b.keys())
        assert len(every) > 5000 and {n.NamespaceIndex for n in every} == {0}
        for n in every:
            assert n in a
            na, nb = a[n], b[n]
            assert _attrs(na) == _attrs(nb), n
            assert na.references == nb.references, n
        assert node_id(999_999, 5) not in a and a.get(node_id(999_999, 5)) is None
        # the mirror's Browse on it (fresh servers: nothing read from the file yet)
        ours, theirs = Server(iserver=ss.StoredStandardServer(store)), Server()
        await ours.init()
        await theirs.init()
        params = ua.BrowseParameters()
        for n in (ua.ObjectIds.RootFolder, ua.ObjectIds.Server, ua.ObjectIds.BaseDataType,
                  ua.ObjectIds.References):
            d = ua.BrowseDescription()
            d.NodeId, d.ReferenceTypeId = node_id(n), node_id(ua.ObjectIds.References)
            d.IncludeSubtypes, d.BrowseDirection = True, ua.BrowseDirection.Both
            params.NodesToBrowse.append(d)
        got = browse(ours.iserver.aspace, params)
        want = ViewService(theirs.iserver.aspace).browse(params)
        assert [r.References for r in got] == [r.References for r in want]
        assert min(len(r.References) for r in got) >= 2 and sum(len(r.References) for r in got) > 20
    asyncio.run(main())


class _Counting(dict[str, Any]):
    """A store that counts what is looked up in it."""

    def __init__(self, source: Any) -> None:
        super().__init__()
        self.source, self.asked = source, 0

    def get(self, key: str, default: Any = None) -> Any:
        self.asked += 1
        return self.source.get(key, default)

    def __contains__(self, key: object) -> bool:
        self.asked += 1
        return key in self.source


def test_only_namespace_0_is_looked_for_in_the_store(store: Path) -> None:
    """The mirror's own nodes are in memory alone: building one asks nothing of the file
    (asyncua's lazy mapping looked each one up there, two or three times)."""
    async def main() -> None:
        server = Server(iserver=ss.StoredStandardServer(store))
        await server.init()
        nodes = server.iserver.aspace._nodes
        assert isinstance(nodes, ss.StandardNodes)
        counting = nodes.source = _Counting(nodes.source)  # type: ignore[assignment]
        mine = node_id("Plant.V1", 2)
        assert mine not in nodes and nodes.get(mine) is None
        with pytest.raises(KeyError):
            nodes[mine]
        assert counting.asked == 0
        nodes[mine] = nodes[node_id(ua.ObjectIds.ObjectsFolder)]
        assert mine in nodes and counting.asked == 1  # the Objects folder, read once
        missing = node_id(999_999)
        assert missing not in nodes and nodes.get(missing) is None and counting.asked == 3
        with pytest.raises(KeyError):
            nodes[missing]
        assert len(nodes) == len(list(nodes)) and mine in list(nodes)
        del nodes[mine]
        assert mine not in nodes
    asyncio.run(main())


def test_a_damaged_store_is_named_and_rebuilt_in_the_cache(
        tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setattr(ss, "installed_dir", lambda: tmp_path / "none")
    monkeypatch.setenv("CACHE_DIRECTORY", str(cache))
    damaged = cache / ss.KEY
    cache.mkdir()
    subprocess.run(["cp", "-a", str(store), str(damaged)], check=True)
    with open(damaged / "nodes.dat", "r+b") as f:
        f.seek(1_000_000)
        byte = f.read(1)
        f.seek(1_000_000)
        f.write(bytes([byte[0] ^ 1]))
    assert ss.problem(damaged) == "nodes.dat does not match its manifest"
    with caplog.at_level(logging.INFO, "diode.sink.opcua"):
        found = asyncio.run(ss.find_store())
    assert found == damaged and ss.problem(damaged) is None
    assert "building its store at" in caplog.text and "does not match" in caplog.text
    # a whole one is used as it is: no second build
    caplog.clear()
    with caplog.at_level(logging.INFO, "diode.sink.opcua"):
        assert asyncio.run(ss.find_store()) == damaged
    assert caplog.text == ""


def test_the_installed_store_comes_first_and_a_damaged_one_is_an_error(
        tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(ss, "installed_dir", lambda: store)
    monkeypatch.setenv("CACHE_DIRECTORY", str(tmp_path / "cache"))
    assert asyncio.run(ss.find_store()) == store
    assert not (tmp_path / "cache").exists()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / ss.MANIFEST).write_text("{")
    monkeypatch.setattr(ss, "installed_dir", lambda: broken)
    with caplog.at_level(logging.INFO, "diode.sink.opcua"):
        found = asyncio.run(ss.find_store())
    assert found == tmp_path / "cache" / ss.KEY and ss.problem(found) is None
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "unreadable manifest" in errors[0].getMessage()


def test_without_a_folder_to_build_in_it_serves_from_memory_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(ss, "installed_dir", lambda: tmp_path / "none")
    for var in ("CACHE_DIRECTORY", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.delenv(var, raising=False)
    with caplog.at_level(logging.WARNING, "diode.sink.opcua"):
        assert asyncio.run(ss.find_store()) is None
    assert "serving it from memory" in caplog.text

    async def main() -> None:
        server = Server(iserver=ss.StoredStandardServer(None))
        await server.init()
        assert len(server.iserver.aspace.keys()) > 5000
    asyncio.run(main())


def test_a_build_that_fails_is_logged_and_leaves_no_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "file").write_text("")  # a cache folder that is a file: nothing builds there
    monkeypatch.setattr(ss, "installed_dir", lambda: tmp_path / "none")
    monkeypatch.setenv("CACHE_DIRECTORY", str(tmp_path / "file"))
    with caplog.at_level(logging.ERROR, "diode.sink.opcua"):
        assert asyncio.run(ss.find_store()) is None
    assert "could not build its store" in caplog.text and "from memory" in caplog.text
    assert "FileExistsError" in caplog.text  # the child's own error, named
    assert os.listdir(tmp_path) == ["file"]


def test_builds_that_race_leave_one_whole_store(tmp_path: Path) -> None:
    path = tmp_path / ss.KEY
    procs = [subprocess.Popen([sys.executable, "-m", "agent.opcua.standard_space", str(path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert ss.problem(path) is None
    assert os.listdir(tmp_path) == [ss.KEY]  # no build folder left behind


def test_the_cache_folder_follows_systemd_then_xdg_then_home(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHE_DIRECTORY", "/var/cache/diode:/var/cache/other")
    assert ss.cache_dir() == Path("/var/cache/diode") / ss.KEY
    monkeypatch.delenv("CACHE_DIRECTORY")
    monkeypatch.setenv("XDG_CACHE_HOME", "/x")
    assert ss.cache_dir() == Path("/x/diode") / ss.KEY
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", "/h")
    assert ss.cache_dir() == Path("/h/.cache/diode") / ss.KEY
