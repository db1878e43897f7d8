"""`diode bench plant`: what mirroring costs the plant, as another client sees it.

```
node-opcua plant (N variables, RATE changes/s) ◄── probe client: browse all, read all
        ▲
        └── diode tx ══ UDP ══► diode rx ─► mirror        (absent in the first phase)
```

The probe is an ordinary OPC UA client (asyncua, in this process): it browses
Objects/Plant and its Area folders (one Browse per folder, as a client
exploring the plant does) and reads every variable's value (2,000 per Read).
Phases, one after the other on the same plant:

- `alone`: the probe with nothing else connected;
- `syncing`: the probe started at the moment TX starts (its crawl, first read
  and subscriptions run while the probe does);
- `mirroring`: TX connected, every variable monitored, values flowing;
- `old_defaults` (unless `--no-old`): the same with what TX asked before the
  plant budget (100 ms sampling, no request budget, one subscription), so
  the bench shows it can see a disturbance. A probe that does not finish
  within `probe_timeout`, or whose connection the plant drops, counts as
  `probe_timeout` and as `unfinished`.

Each phase's figure is the median of `rounds` probes (browse + read seconds).
`*_ratio` is that against `alone` (1.0: no effect). All processes share this
machine's cores, so a ratio also holds the CPU the agents take from the plant
here; on a gateway they have their own board.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from asyncua import Client, ua

from diode_tools.bench.opcua import _plant_variables, _read
from diode_tools.sim.agents import AgentPair
from diode_tools.sim.mosquitto import free_port
from diode_tools.sim.node_opcua import BigPlant

OLD_DEFAULTS = ("sampling_interval = 0.1\nrequests_per_second = 10000.0\n"
                "items_per_subscription = 1000000\n")


async def _probe_once(endpoint: str, nodes: int) -> tuple[float, float]:
    async with Client(endpoint, timeout=60) as c:
        t0 = time.monotonic()
        found = await _plant_variables(c)
        t1 = time.monotonic()
        await _read(c, list(found.values()))
        t2 = time.monotonic()
    if len(found) != nodes:
        raise RuntimeError(f"the probe found {len(found)} of {nodes} plant variables")
    return t1 - t0, t2 - t1


def probe(endpoint: str, nodes: int, timeout: float) -> dict[str, Any]:
    """One probe: browse and read seconds; the timeout's length if it did not finish in
    time, or the plant dropped the probe's connection (overloaded, it does)."""
    started = time.monotonic()
    try:
        browse, read = asyncio.run(asyncio.wait_for(_probe_once(endpoint, nodes), timeout))
    except (TimeoutError, OSError, ua.UaError) as exc:
        took = timeout if isinstance(exc, TimeoutError) else time.monotonic() - started
        return {"s": max(took, timeout), "browse_s": None, "read_s": None, "finished": False,
                "error": type(exc).__name__}
    return {"s": browse + read, "browse_s": round(browse, 2), "read_s": round(read, 2),
            "finished": True}


def _phase(endpoint: str, nodes: int, rounds: int, timeout: float) -> dict[str, Any]:
    runs = [probe(endpoint, nodes, timeout) for _ in range(rounds)]
    return {"s": round(statistics.median(r["s"] for r in runs), 2),
            "unfinished": sum(not r["finished"] for r in runs),
            "runs": [r["s"] for r in runs]}


def _pair(work: Path, plant: BigPlant, extra: str) -> AgentPair:
    mirror = f"opc.tcp://127.0.0.1:{free_port()}/diode/"
    return AgentPair(work, None, None,
                     tx_extra=f'\n[[opcua]]\nname = "plant"\nendpoint = "{plant.endpoint}"\n'
                     f'{extra}',
                     rx_extra=f'\n[[opcua]]\nname = "plant"\nendpoint = "{mirror}"\n')


def _mirrored(work: Path, plant: BigPlant, nodes: int, rounds: int, timeout: float,
              extra: str, syncing: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    pair = _pair(work, plant, extra)
    try:
        pair.start("rx")
        pair.wait_status("rx")
        t0 = time.monotonic()
        pair.start("tx")
        if syncing:
            out["syncing"] = round(probe(plant.endpoint, nodes, timeout)["s"], 2)
        pair.wait_up(300)
        out["sync_s"] = round(time.monotonic() - t0, 1)
        time.sleep(2.0)  # past the first notifications: the steady state
        out["mirroring"] = _phase(plant.endpoint, nodes, rounds, timeout)
        tx = (pair.status("tx") or {}).get("counters", {})
        out["tx"] = {k: tx.get(f"opcua:plant.{k}") for k in (
            "requests", "budget_wait_ms", "subscriptions", "monitored_items",
            "sampling_revised", "sampling_max_ms", "changes")}
    finally:
        pair.close()
    return out


def run_plant_bench(nodes: int = 20_000, rate: float = 1000.0, rounds: int = 3,
                    probe_timeout: float = 60.0, old: bool = True) -> dict[str, Any]:
    result: dict[str, Any] = {"nodes": nodes, "plant_rate": rate, "rounds": rounds}
    work = Path(tempfile.mkdtemp(prefix="diode-bench-plant-"))
    try:
        plant = BigPlant(nodes, rate, work)
        try:
            probe(plant.endpoint, nodes, probe_timeout)  # warm the plant's caches
            alone = _phase(plant.endpoint, nodes, rounds, probe_timeout)
            result["alone_s"] = alone["s"]
            (work / "ours").mkdir()
            ours = _mirrored(work / "ours", plant, nodes, rounds, probe_timeout, "", True)
            result["sync_s"] = ours["sync_s"]
            result["syncing_s"] = ours["syncing"]
            result["mirroring_s"] = ours["mirroring"]["s"]
            result["syncing_ratio"] = round(ours["syncing"] / alone["s"], 2)
            result["mirroring_ratio"] = round(ours["mirroring"]["s"] / alone["s"], 2)
            result["tx"] = ours["tx"]
            if old:
                (work / "old").mkdir()
                before = _mirrored(work / "old", plant, nodes, 1, probe_timeout,
                                   OLD_DEFAULTS, False)
                result["old_defaults_s"] = before["mirroring"]["s"]
                result["old_defaults_unfinished"] = before["mirroring"]["unfinished"]
                result["old_defaults_ratio"] = round(before["mirroring"]["s"] / alone["s"], 2)
            result["alone_runs"] = alone["runs"]
            result["mirroring_runs"] = ours["mirroring"]["runs"]
        finally:
            plant.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result
