"""OPC UA's standard address space kept on disk, read node by node: half of RX's memory.

asyncua's `Server.init()` builds the standard address space (about 6,000 nodes: the
types, the Server object) in memory: 51 MB and 1.3 s on the development machine, more
than the mirror of 10,000 plant variables. Almost none of it is ever read: a client
browses the Objects folder, the Server object and the types the plant's nodes name.

So RX builds it once into a store (a `dbm.dumb` shelf of asyncua's own node records, as
asyncua's `make_aspace_shelf` makes) and serves it from a lazily loading mapping
(`StandardNodes`, as asyncua's `load_aspace_shelf` does, but for namespace 0 alone): a
node is read from the file the first time it is needed, and kept. The mirror then starts
in 0.1 s at about 54 MB.

```
installed store ──(valid?)──► load ◄──(valid?)── cached store ◄── built in a child process
(<venv>/share/diode, made      │                 ($CACHE_DIRECTORY, $XDG_CACHE_HOME/diode or
 by setup and the image)       ▼                  ~/.cache/diode), when neither is valid
                       asyncua's standard space, in memory, logged: no folder to build in
```

A store is named by the asyncua and Python versions that made it: a node record is a
pickle of asyncua's classes, so an upgrade builds a new one. Its manifest, written last,
holds each file's SHA-256, checked at every start: an SD card that lost a block gives a
rebuilt store, not a node that fails to load in the middle of a client's browse.
Pickles run code when loaded: the store is as trusted as the code, in the venv (root's)
or in the agent's own cache folder (0700).
"""

from __future__ import annotations

import asyncio
import dbm.dumb
import hashlib
import json
import logging
import os
import pickle
import shelve
import shutil
import sys
import tempfile
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any, cast

import asyncua
from asyncua import ua
from asyncua.server.address_space import NodeData
from asyncua.server.internal_server import InternalServer

log = logging.getLogger("diode.sink.opcua")

KEY = f"opcua-standard-asyncua{asyncua.__version__}-py{sys.version_info[0]}.{sys.version_info[1]}"
NODES = "nodes"                        # the shelf's files: nodes.dat, nodes.dir
FILES = (f"{NODES}.dat", f"{NODES}.dir")
MANIFEST = "manifest.json"


def installed_dir() -> Path:
    return Path(sys.prefix) / "share" / "diode" / KEY


def cache_dir() -> Path | None:
    """Where RX builds a store: systemd's CacheDirectory=, else the XDG cache."""
    env = os.environ
    if env.get("CACHE_DIRECTORY"):     # systemd: the unit's own folder(s), ':'-separated
        return Path(env["CACHE_DIRECTORY"].split(":")[0]) / KEY
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]) / "diode" / KEY
    return Path(env["HOME"]) / ".cache" / "diode" / KEY if env.get("HOME") else None


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def problem(store: Path) -> str | None:
    """Why `store` cannot be loaded, or None when it is whole."""
    try:
        manifest = json.loads((store / MANIFEST).read_text())
    except FileNotFoundError:
        return "not built"
    except (OSError, ValueError) as e:
        return f"unreadable manifest ({e})"
    try:
        for name in FILES:
            if _digest(store / name) != manifest.get(name):
                return f"{name} does not match its manifest"
    except OSError as e:
        return f"unreadable ({e})"
    return None


async def _fill(target: Path, mode: int) -> int:
    """asyncua's standard address space, stored in `target` (a new folder), its files
    with `mode`."""
    iserver = InternalServer()
    await iserver.load_standard_address_space()
    nodes: Any = iserver.aspace._nodes
    # dbm.dumb whatever the Python build has: the store is the same on every board
    shelf: shelve.Shelf[Any]
    with shelve.Shelf(cast(Any, dbm.dumb.open(str(target / NODES), "n")),  # typeshed: no Mapping
                      protocol=pickle.HIGHEST_PROTOCOL) as shelf:
        for nodeid, ndata in nodes.items():
            shelf[nodeid.to_string()] = ndata
    (target / f"{NODES}.bak").unlink(missing_ok=True)  # dbm.dumb's copy of .dir: not read
    for name in FILES:
        with open(target / name, "rb+") as f:
            os.fsync(f.fileno())
    manifest: dict[str, Any] = {name: _digest(target / name) for name in FILES}
    manifest["nodes"] = len(nodes)
    with open(target / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    for name in (*FILES, MANIFEST):
        os.chmod(target / name, mode)
    return len(nodes)


def build(store: Path, shared: bool) -> int:
    """Build the store at `store`, whole or not at all: in a folder beside it, renamed
    into place. Another process that built it first wins; returns the node count.

    A shared store (the venv's) is readable by all: the agent runs as another user than
    the venv's owner. Nothing in it is secret, but a cache is its user's alone."""
    dir_mode, file_mode = (0o755, 0o644) if shared else (0o700, 0o600)
    store.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode)
    tmp = Path(tempfile.mkdtemp(prefix=f".{store.name}.", dir=store.parent))
    try:
        os.chmod(tmp, dir_mode)
        count = asyncio.run(_fill(tmp, file_mode))
        if store.exists():                  # a store that failed its check
            shutil.rmtree(store, ignore_errors=True)
        try:
            os.rename(tmp, store)
        except OSError:
            if problem(store) is not None:  # not a concurrent build that won
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return count


async def _build_in_child(store: Path) -> str | None:
    """Build in a child process, so the 51 MB this takes is not RX's for good; None on
    success, else what went wrong."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", __name__, str(store),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"exit status {proc.returncode}"
    return None  # build() renames only a whole store into place


async def find_store() -> Path | None:
    """A whole store to serve, built first when there is none; None: serve asyncua's
    in-memory standard address space (logged, with why). The checks hash 20 MB: in a
    thread, as the link receiver may already be running."""
    installed = installed_dir()
    why = await asyncio.to_thread(problem, installed)
    if why is None:
        return installed
    if why != "not built":
        log.error("OPC UA standard address space at %s: %s; using the cache folder "
                  "instead (run 'python -m agent.opcua.standard_space' as the venv's "
                  "owner to rebuild it)", installed, why)
    cached = cache_dir()
    if cached is None:
        log.warning("OPC UA standard address space: no store at %s and no cache folder "
                    "(HOME, XDG_CACHE_HOME or CACHE_DIRECTORY) to build one in: serving it "
                    "from memory, about 50 MB more", installed)
        return None
    why = await asyncio.to_thread(problem, cached)
    if why is None:
        return cached
    log.info("OPC UA standard address space: building its store at %s (%s); once per "
             "asyncua version", cached, why)
    why = await _build_in_child(cached)
    if why is None:
        return cached
    log.error("OPC UA standard address space: could not build its store at %s: %s; "
              "serving it from memory, about 50 MB more", cached, why)
    return None


class StandardNodes(MutableMapping[ua.NodeId, NodeData]):
    """An address space's nodes: the standard ones (namespace 0) read from the store the
    first time they are asked for, every other one in memory.

    asyncua's own lazy mapping (`AddressSpace.load_aspace_shelf`) looks a node up in the
    store whenever it is not in memory yet: each of the mirror's nodes, two or three
    times as it is built (a node id made a string, a lookup in the store's index, an
    exception for the answer), a tenth of RX's time building a model. The store holds
    namespace 0 only, so no other node is looked for there."""

    def __init__(self, source: shelve.Shelf[NodeData]) -> None:
        self.source = source
        self.cache: dict[ua.NodeId, NodeData] = {}

    def _load(self, key: ua.NodeId) -> NodeData | None:
        if key.NamespaceIndex != 0:
            return None
        node = self.source.get(key.to_string())
        if node is not None:
            self.cache[key] = node
        return node

    def __getitem__(self, key: ua.NodeId) -> NodeData:
        node = self.cache.get(key)
        if node is None:
            node = self._load(key)
            if node is None:
                raise KeyError(key)
        return node

    def get(self, key: ua.NodeId, default: Any = None) -> Any:
        node = self.cache.get(key)
        if node is None:
            node = self._load(key)
        return default if node is None else node

    def __contains__(self, key: object) -> bool:
        return key in self.cache or (isinstance(key, ua.NodeId) and key.NamespaceIndex == 0
                                     and key.to_string() in self.source)

    def __setitem__(self, key: ua.NodeId, value: NodeData) -> None:
        self.cache[key] = value

    def __delitem__(self, key: ua.NodeId) -> None:
        del self.cache[key]

    def __iter__(self) -> Iterator[ua.NodeId]:
        return iter(self.cache)

    def __len__(self) -> int:
        return len(self.cache)


class StoredStandardServer(InternalServer):
    """asyncua's internal server with its standard address space read from `store`
    (None: built in memory, as asyncua does)."""

    def __init__(self, store: Path | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._store = store

    async def load_standard_address_space(self, shelf_file: Path | None = None) -> None:
        if self._store is None:
            await super().load_standard_address_space()
        else:
            # what asyncua's load_aspace_shelf sets, with a mapping of ours (StandardNodes)
            shelf = shelve.open(str(self._store / NODES), "r")  # noqa: SIM115 (the server's)
            self.aspace._nodes = StandardNodes(shelf)  # type: ignore[assignment]


def main(argv: list[str]) -> int:
    """python -m agent.opcua.standard_space [STORE]: build the venv's store (setup and the
    SD-card image do), or a private one at STORE (RX, for its cache), unless it is whole."""
    store = Path(argv[0]) if argv else installed_dir()
    why = problem(store)
    if why is None:
        print(f"{store}: whole")
    else:
        print(f"{store}: {why}; built, {build(store, shared=not argv)} nodes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
