"""`diode bench opcua`: how fast and how fresh an OPC UA plant is mirrored
through the agents, against the PyPI package `opcua-data-diode` (its
`opcua-sender` / `opcua-receiver`) measured on the same plant in the same run.

```
ours: plant (own process)          ─► diode tx ══ UDP ══► diode rx ─► read-only mirror ◄─ probe client
peer: plant (same process)         ─► opcua-sender ═ UDP ═► opcua-receiver (shadow server) ◄─ probe client
```

The two are run one after the other against the same plant, so they never
compete for the CPU. The plant is node-opcua's (scripts/node-opcua/big_plant.mjs:
Objects/Plant/AreaNNN folders of 100 Double variables `Vnnnnn`), an
implementation we did not write, which publishes 10,000 changes a second with
room to spare. `--plant asyncua` takes our own simulator instead (the same
folders and names, and more node kinds), up to `ASYNCUA_MAX` variables: above,
it takes minutes to come up or never does, and at 10,000 changes a second its
own subscriptions fall behind (about half the values more than 2 s old on the
plant's side of the link: the plant, not the diode, is then measured). `plant`
says which it was. The plant changes `rate` values per second in total (every variable once a second, at
most 10,000 a second). `--no-peer` skips the peer, which above 20,000
variables takes many minutes, and says so in `peer`.

- `sync_s` / `peer_sync_s`: from starting TX (the peer's sender), with RX (the
  peer's receiver) already serving its empty server, until a probe client
  browsing Objects/Plant/Area* on the mirror finds all N plant variables (by
  browse name ``Vnnnnn``, so the peer's renumbered node ids count too) and
  reading them all returns Good values. A new TX board on a running RX, or a TX
  restart, is this case. The probe polls about every 0.05 s whether the last
  Area folder holds the last variable (three small requests), then browses every
  folder in a few requests and reads every variable (decoding only the status
  codes); that browse and read bound the figure's resolution. `rx_ready_s` /
  `peer_rx_ready_s`: from starting RX until its server answered.
- `first_value_s`: from starting TX until the mirror first answers a read of
  a plant variable (V00000) with a Good value: what an IT client can have
  before the whole model is in.
- `model_bytes`: the model TX put on the link, compressed, one copy (TX sends
  each frame `repeat` times, 3 by default).
- `updates_per_s`: RX's `opcua.plant.values_applied` delta over `window`
  seconds after sync, next to `plant_rate`, the plant's own change rate: if
  the two are close the diode kept up and the plant was the limit. The asyncua plant
  also rewrites its 11 Plant/Special variables every 50 ms tick (220 changes/s,
  not in `plant_rate`) and RX counts applied values per batch entry, so on a
  small plant `updates_per_s` can exceed `plant_rate`.
- `fresh_fraction` / `peer_fresh_fraction`: 2,000 random plant variables are
  read at the same moment (concurrently) on the plant and on the mirror; a
  variable is fresh, the mirror at most 2 s behind the plant, if the values are
  equal (to 1e-4: the peer stores Doubles as Float), or the mirror's
  SourceTimestamp is at least the plant's, or the plant's value was less than
  2 s old when both reads had returned (it may still be on its way). The peer
  writes its own time as SourceTimestamp, which can only favour it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Client, Node, ua

from agent.opcua.off_loop import OffLoopSession
from diode_tools.sim.agents import AgentPair, _die_with_parent, free_udp_port
from diode_tools.sim.mosquitto import Broker, free_port, terminate
from diode_tools.sim.node_opcua import BIG_NAMESPACE, BigPlant
from diode_tools.sim.plant_opcua import NAMESPACE, PlantProcess, variable_id

VAR_NAME = re.compile(r"V\d{5}$")
SAMPLE = 2000
READ_CHUNK = 2000
ASYNCUA_MAX = 20_000  # variables: above, the plant is node-opcua's


@dataclass(frozen=True)
class Plant:
    """The plant under the bench: where it serves, and the id of its variable i."""

    kind: str
    endpoint: str
    namespace: str
    node_id: Callable[[int], str]
    stop: Callable[[], None]


def _plant(nodes: int, rate: float, work: Path, kind: str = "node-opcua") -> Plant:
    if kind == "asyncua":
        if nodes > ASYNCUA_MAX:
            raise ValueError(f"--plant asyncua serves at most {ASYNCUA_MAX} variables; "
                             f"take --plant node-opcua for {nodes}")
        p = PlantProcess(free_port(), variables=nodes, rate=rate)
        return Plant("asyncua", p.endpoint, NAMESPACE, variable_id, p.stop)
    (work / "plant").mkdir()
    big = BigPlant(nodes, rate, work / "plant")
    return Plant("node-opcua", big.endpoint, BIG_NAMESPACE, lambda i: f"Plant.V{i:05d}",
                 big.close)


BROWSE_CHUNK = 100  # folders per Browse request of the probe: 10,000 references
HIERARCHICAL = ua.NodeId(ua.Int32(ua.ObjectIds.HierarchicalReferences))


async def _children(client: Client, parents: list[ua.NodeId]
                    ) -> list[list[ua.ReferenceDescription]]:
    """The forward hierarchical references of each of `parents`: one Browse request per
    BROWSE_CHUNK of them, BrowseNext while the server holds back the rest. Decoded in a
    thread, so the client's keep-alive goes on meanwhile (at 100,000 variables a decode
    on the loop made the client take its server for gone)."""
    session = OffLoopSession(client.uaclient.session)
    out: list[list[ua.ReferenceDescription]] = []
    for i in range(0, len(parents), BROWSE_CHUNK):
        params = ua.BrowseParameters()
        for n in parents[i:i + BROWSE_CHUNK]:
            desc = ua.BrowseDescription()
            desc.NodeId = n
            desc.BrowseDirection = ua.BrowseDirection.Forward
            desc.ReferenceTypeId = HIERARCHICAL
            desc.IncludeSubtypes = True
            desc.ResultMask = ua.BrowseResultMask.All
            params.NodesToBrowse.append(desc)
        results = await session.browse(params)
        refs = [list(r.References) for r in results]
        pending = {k: r.ContinuationPoint for k, r in enumerate(results) if r.ContinuationPoint}
        while pending:
            nxt = ua.BrowseNextParameters()
            nxt.ContinuationPoints = list(pending.values())
            more = await session.browse_next(nxt)
            for (k, _), r in zip(list(pending.items()), more, strict=True):
                refs[k].extend(r.References)
                if r.ContinuationPoint:
                    pending[k] = r.ContinuationPoint
                else:
                    del pending[k]
        out.extend(refs)
    return out


def _named(refs: list[ua.ReferenceDescription], test: Callable[[str], bool]
           ) -> list[ua.ReferenceDescription]:
    return [r for r in refs if test(r.BrowseName.Name)]


async def _areas(client: Client) -> list[ua.ReferenceDescription]:
    """Objects/Plant/Area*, by browse name, in name order."""
    objects = await _children(client, [client.nodes.objects.nodeid])
    plants = _named(objects[0], lambda name: name == "Plant")
    if not plants:
        return []
    return sorted(_named((await _children(client, [plants[0].NodeId]))[0],
                         lambda name: name.startswith("Area")), key=lambda r: r.BrowseName.Name)


async def _has_last(client: Client, nodes: int) -> bool:
    """Whether the last Area folder holds plant variable `nodes` - 1 (both plants fill
    folders of 100 in order): a poll of three small requests, so the probe browses every
    folder only once the mirror may be whole."""
    areas = await _areas(client)
    if not areas:
        return False
    last = f"V{nodes - 1:05d}"
    return any(r.BrowseName.Name == last for r in (await _children(client, [areas[-1].NodeId]))[0])


async def _plant_variables(client: Client) -> dict[str, Node]:
    """Browse name -> node of the plant variables under Objects/Plant/Area* (any
    namespace), in a few requests: the probe's own cost must not hide the mirror's."""
    found: dict[str, Node] = {}
    for refs in await _children(client, [a.NodeId for a in await _areas(client)]):
        for ref in refs:
            if ref.NodeClass == ua.NodeClass.Variable and VAR_NAME.match(ref.BrowseName.Name):
                found[ref.BrowseName.Name] = client.get_node(ref.NodeId)
    return found


async def _read(client: Client, nodes: list[Node]) -> list[ua.DataValue]:
    out: list[ua.DataValue] = []
    for i in range(0, len(nodes), READ_CHUNK):
        params = ua.ReadParameters()
        for n in nodes[i:i + READ_CHUNK]:
            rv = ua.ReadValueId()
            rv.NodeId = n.nodeid
            rv.AttributeId = ua.AttributeIds.Value
            params.NodesToRead.append(rv)
        out.extend(await client.uaclient.read(params))
    return out


async def _first_value(endpoint: str, plant: Plant, timeout: float, t0: float
                       ) -> float | None:
    """Seconds since `t0` until the mirror reads plant variable 0 as Good."""
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        try:
            async with Client(endpoint, timeout=10) as c:
                while time.monotonic() < deadline:
                    uris = await c.get_namespace_array()
                    if plant.namespace in uris:
                        ns = uris.index(plant.namespace)
                        node = c.get_node(f"ns={ns};s={plant.node_id(0)}")
                        try:
                            dv = await node.read_data_value(raise_on_bad_status=False)
                        except ua.UaError:  # not in the mirror yet
                            dv = None
                        if dv is not None and dv.StatusCode is not None \
                                and dv.StatusCode.is_good() and dv.Value is not None \
                                and dv.Value.Value is not None:
                            return round(time.monotonic() - t0, 2)
                    await asyncio.sleep(0.05)
        except (OSError, TimeoutError, ua.UaError):
            pass
        await asyncio.sleep(0.05)
    return None


async def _wait_synced(endpoint: str, nodes: int, timeout: float, t0: float,
                       alive: Any) -> tuple[float | None, int]:
    """Seconds since `t0` until all `nodes` plant variables are browsable and Good, and
    how many were (last poll)."""
    seen = 0
    deadline = t0 + timeout
    found: dict[str, Node] = {}
    while time.monotonic() < deadline:
        alive()
        try:
            async with Client(endpoint, timeout=10) as c:
                while time.monotonic() < deadline:
                    alive()
                    # once every variable was found, only the values are read again: at
                    # 100,000 a browse of every folder takes seconds of the figure
                    if len(found) < nodes or not nodes:
                        if nodes and not await _has_last(c, nodes):
                            await asyncio.sleep(0.05)
                            continue
                        found = await _plant_variables(c)
                    seen = len(found)
                    if seen >= nodes and await _good(c, list(found.values())) >= nodes:
                        return round(time.monotonic() - t0, 2), seen
                    await asyncio.sleep(0.05)
        except (OSError, TimeoutError, ua.UaError):
            pass
        await asyncio.sleep(0.2)
    return None, seen


async def _good(client: Client, nodes: list[Node]) -> int:
    """How many of `nodes` read Good: the requests all sent at once, only the status
    codes decoded (agent/opcua/raw_values.py), so the probe's own cost stays small."""
    session = OffLoopSession(client.uaclient.session)

    async def chunk(part: list[Node]) -> int:
        params = ua.ReadParameters()
        for n in part:
            rv = ua.ReadValueId()
            rv.NodeId = n.nodeid
            rv.AttributeId = ua.AttributeIds.Value
            params.NodesToRead.append(rv)
        return sum(1 for _, code, _, _ in await session.read_raw(params)
                   if not code & 0xC0000000)
    counts = await asyncio.gather(*(chunk(nodes[i:i + READ_CHUNK])
                                    for i in range(0, len(nodes), READ_CHUNK)))
    return sum(counts)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-4)
    return bool(a == b)


def _fresh(plant: ua.DataValue, mirror: ua.DataValue, read_at: datetime) -> bool:
    """Whether the mirror is at most 2 s behind the plant for this variable: it shows the
    plant's value, or one at least as new, or the plant's value is less than 2 s old at
    `read_at` (when both reads had returned), so it may still be on its way."""
    if _same(plant.Value.Value if plant.Value else None,
             mirror.Value.Value if mirror.Value else None):
        return True
    ps, ms = plant.SourceTimestamp, mirror.SourceTimestamp
    if not isinstance(ps, datetime) or not isinstance(ms, datetime):
        return False
    return ms >= ps or (read_at - ps).total_seconds() <= 2.0


async def _freshness(plant: Plant, mirror_ep: str, nodes: int, seed: int = 1) -> float:
    """Fraction of SAMPLE random plant variables whose mirror value is current (see module doc)."""
    names = [f"V{i:05d}" for i in random.Random(seed).sample(range(nodes), min(SAMPLE, nodes))]
    async with Client(plant.endpoint, timeout=10) as p, Client(mirror_ep, timeout=10) as m:
        ns = await p.get_namespace_index(plant.namespace)
        plant_nodes = [p.get_node(f"ns={ns};s={plant.node_id(int(n[1:]))}") for n in names]
        found = await _plant_variables(m)
        mirror_nodes = [found[n] for n in names if n in found]
        plant_nodes = [pn for pn, n in zip(plant_nodes, names, strict=True) if n in found]
        pv, mv = await asyncio.gather(_read(p, plant_nodes), _read(m, mirror_nodes))
        read_at = datetime.now(UTC)
    fresh = sum(_fresh(a, b, read_at) for a, b in zip(pv, mv, strict=True))
    return round(fresh / len(names), 3)


def _ours(plant: Plant, nodes: int, window: float, timeout: float,
          work: Path) -> dict[str, Any]:
    result: dict[str, Any] = {}
    mirror = f"opc.tcp://127.0.0.1:{free_port()}/diode/"
    with Broker() as ot, Broker() as it:
        pair = AgentPair(
            work, ot, it,
            tx_extra=f'\n[[opcua]]\nname = "plant"\nendpoint = "{plant.endpoint}"\n',
            rx_extra=f'\n[[opcua]]\nname = "plant"\nendpoint = "{mirror}"\n')

        def alive() -> None:
            for role, proc in pair.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{role} exited with {proc.returncode}:\n{pair.log(role)}")

        try:
            started = time.monotonic()
            pair.start("rx")
            asyncio.run(_wait_synced(mirror, 0, 60, started, alive))
            result["rx_ready_s"] = round(time.monotonic() - started, 2)
            t0 = time.monotonic()
            pair.start("tx")

            async def sync_and_first() -> tuple[tuple[float | None, int], float | None]:
                return await asyncio.gather(_wait_synced(mirror, nodes, timeout, t0, alive),
                                            _first_value(mirror, plant, timeout, t0))

            (sync, seen), result["first_value_s"] = asyncio.run(sync_and_first())
            result["sync_s"] = sync
            if sync is None:
                raise RuntimeError(f"mirror had {seen}/{nodes} variables after {timeout} s")

            def applied() -> int:
                st = pair.status("rx") or {}
                return int(st.get("opcua", {}).get("plant", {}).get("values_applied", 0))

            a0, w0 = applied(), time.monotonic()
            time.sleep(window)
            a1, w1 = applied(), time.monotonic()
            # The status file is written once a second: the window is accurate to ~1 s.
            result["updates_per_s"] = round((a1 - a0) / (w1 - w0))
            tx_counters = (pair.status("tx") or {}).get("counters", {})  # a status newer than the model
            result["model_bytes"] = tx_counters.get("opcua:plant.model_bytes")
            result["fresh_fraction"] = asyncio.run(_freshness(plant, mirror, nodes))
            result["tx_rss_mb"] = pair.peak_rss_mb("tx")
            result["rx_rss_mb"] = pair.peak_rss_mb("rx")
        finally:
            pair.close()
    return result


def _peer(plant: Plant, nodes: int, timeout: float, work: Path) -> dict[str, Any]:
    """`opcua-data-diode`'s sender and receiver (JSON configs, one positional argument each)."""
    if importlib.util.find_spec("opcua_data_diode") is None:
        return {"peer_sync_s": None, "peer_error": "opcua-data-diode not installed "
                "(pip install opcua-data-diode)"}
    udp, shadow_port = free_udp_port(), free_port()
    (work / "peer-rx.json").write_text(json.dumps({
        "shadow_server_port": shadow_port, "shadow_server_name": "peer shadow",
        "udp_host": "127.0.0.1", "udp_port": udp}))
    (work / "peer-tx.json").write_text(json.dumps({
        "opcua_server_url": plant.endpoint, "udp_host": "127.0.0.1", "udp_port": udp,
        "subscription_interval": 100, "structure_check_interval": 3600}))
    shadow = f"opc.tcp://127.0.0.1:{shadow_port}/shadow/"
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(role: str, module: str) -> None:
        log = open(work / f"peer-{role}.log", "ab")  # noqa: SIM115 (owned by the process)
        procs[role] = subprocess.Popen(
            [sys.executable, "-m", f"opcua_data_diode.cli.{module}",
             str(work / f"peer-{role}.json")], stdout=log, stderr=log, cwd=work,
            preexec_fn=_die_with_parent)

    def alive() -> None:
        for role, proc in procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"peer {role} exited with {proc.returncode}")

    result: dict[str, Any] = {"peer": "opcua-data-diode"}
    try:
        from importlib.metadata import version
        result["peer"] = f"opcua-data-diode {version('opcua-data-diode')}"
        started = time.monotonic()
        start("rx", "receiver_auto")
        # The sender must start after the receiver listens (its own README says so).
        asyncio.run(_wait_synced(shadow, 0, 15, started, alive))
        result["peer_rx_ready_s"] = round(time.monotonic() - started, 2)
        t0 = time.monotonic()
        start("tx", "sender_auto")
        sync, seen = asyncio.run(_wait_synced(shadow, nodes, timeout, t0, alive))
        result["peer_sync_s"] = sync
        if sync is None:
            result["peer_error"] = (f"shadow server had {seen}/{nodes} plant variables "
                                    f"after {timeout:.0f} s")
        else:
            result["peer_fresh_fraction"] = asyncio.run(_freshness(plant, shadow, nodes))
    except Exception as exc:  # report, never fake, the peer's figure
        result["peer_sync_s"] = None
        result["peer_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    finally:
        for proc in procs.values():
            terminate(proc, 10)
    return result


def run_opcua_bench(nodes: int = 10_000, window: float = 10.0, timeout: float | None = None,
                    peer: bool = True, peer_timeout: float = 300.0,
                    plant: str = "node-opcua") -> dict[str, Any]:
    rate = float(min(nodes, 10_000))  # every variable about once a second, at most 10,000/s
    timeout = timeout if timeout is not None else max(300.0, nodes / 100)
    result: dict[str, Any] = {"nodes": nodes, "plant_rate": round(rate), "window_s": window}
    if not peer:
        result["peer"] = "skipped (--no-peer)"
    with tempfile.TemporaryDirectory(prefix="diode-bench-opcua-") as tmp:
        work = Path(tmp)
        served = _plant(nodes, rate, work, plant)
        result["plant"] = served.kind
        try:
            result.update(_ours(served, nodes, window, timeout, work))
            if peer:
                result.update(_peer(served, nodes, peer_timeout, work))
        finally:
            served.stop()
    if result.get("sync_s") and result.get("peer_sync_s"):
        result["sync_speedup"] = round(result["peer_sync_s"] / result["sync_s"], 2)
    return result
