"""TX's model cache (agent/opcua/model_cache.py): a TX restart sends the model at once
and, against an unchanged server, only checks it.

```
asyncua plant ─► diode tx ([spool] dir: <name>.opcua-model) ══ UDP ══► diode rx ─► mirror
   stopped while TX restarts: the mirror serves the cached model all the same
```
"""

from __future__ import annotations

import asyncio
import stat

from asyncua import Client, ua

from agent.spool import write_spool_key
from diode_tools.sim.mosquitto import free_port
from diode_tools.sim.plant_opcua import PlantProcess, variable_id
from tests.integration.conftest import Diode, wait_until


async def _served(endpoint: str, node_id: str) -> bool:
    """The mirror has the node (whatever its value's quality)."""
    try:
        async with Client(endpoint, timeout=5) as c:
            dv = await c.get_node(node_id).read_data_value(raise_on_bad_status=False)
    except (OSError, TimeoutError, ua.UaError):
        return False
    return dv.StatusCode is None or dv.StatusCode.value != ua.StatusCodes.BadNodeIdUnknown


def test_a_restarted_tx_sends_its_cached_model_at_once_and_does_not_crawl(
        diode: Diode) -> None:
    plant = PlantProcess(free_port(), variables=300, rate=50)
    try:
        key = diode.tmp / "spool.key"
        write_spool_key(key)
        mirror = f"opc.tcp://127.0.0.1:{free_port()}/diode/"
        tx_doc, rx_doc = diode.tx_doc(), diode.rx_doc()
        del tx_doc["mqtt"], rx_doc["mqtt"]
        tx_doc["status"]["interval"] = 0.5
        tx_doc["spool"] = {"dir": str(diode.tmp / "spool-tx"), "key_file": str(key)}
        tx_doc["opcua"] = [{"name": "plant", "endpoint": plant.endpoint}]
        rx_doc["opcua"] = [{"name": "plant", "endpoint": mirror}]
        rx = diode.start("rx", rx_doc)
        tx = diode.start("tx", tx_doc)
        st = diode.wait_status(tx, lambda s: s["sources"].get("opcua:plant") == "connected",
                               60, "TX connected")
        assert st["counters"]["opcua:plant.crawls"] == 1
        cache = diode.tmp / "spool-tx" / "plant.opcua-model"
        wait_until(cache.exists, 10, "the model cache written")
        assert stat.S_IMODE(cache.stat().st_mode) == 0o600
        diode.stop(tx)
        diode.stop(rx)

        # a fresh RX (no model) and the plant away: the cache is all TX has
        plant.stop()
        rx2 = diode.start("rx", rx_doc, "rx2")
        tx2 = diode.start("tx", tx_doc, "tx2")
        node = f"ns=2;s={variable_id(0)}"
        wait_until(lambda: asyncio.run(_served(mirror, node)), 30,
                   "the mirror serving the cached model while the plant is down")
        st = tx2.status() or {}
        assert st["counters"]["opcua:plant.model_cache_loads"] == 1, st["counters"]
        assert st["sources"]["opcua:plant"] != "connected"

        # the plant back, unchanged: the fingerprint holds, no crawl
        plant = plant.restarted()
        st = diode.wait_status(tx2, lambda s: s["sources"].get("opcua:plant") == "connected",
                               60, "TX connected again")
        c = {k.removeprefix("opcua:plant."): v for k, v in st["counters"].items()}
        assert c["crawls"] == 0 and c["model_reuses"] == 1, c
        diode.wait_status(rx2, lambda s: s["tx"]["sources"].get("opcua:plant") == "connected",
                          15, "RX hearing TX connected")
    finally:
        plant.stop()
