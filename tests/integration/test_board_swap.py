"""Board swap: a technician copies the boot folder (config + key) onto a fresh card,
pulls the power of the running board and boots the new one. Nothing is done on the
other side; data and retained state flow again within one carousel period."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from diode_tools.sim.mosquitto import Broker
from tests.integration.conftest import Collector, Diode, publish_all

MakeCollector = Callable[..., Collector]
CAROUSEL = 3.0


def _card(diode: Diode, name: str, doc: dict) -> Path:
    """A boot folder as a technician prepares it: <role>.toml and link.key side by side."""
    folder = diode.tmp / name
    folder.mkdir()
    shutil.copy2(diode.key, folder / "link.key")  # keeps mode 0600
    doc["link"]["key_file"] = "link.key"
    doc["status"]["file"] = str(folder / "status.json")
    return diode.write(f"{name}/{name.split('-')[0]}.toml", doc)


def _new_card_from(old: Path, name: str) -> Path:
    new = old.parent.parent / name
    shutil.copytree(old.parent, new)
    (new / "status.json").unlink(missing_ok=True)
    text = (new / old.name).read_text().replace(str(old.parent / "status.json"),
                                                str(new / "status.json"))
    (new / old.name).write_text(text)
    return new / old.name


def test_swap_tx_then_rx(diode: Diode, ot_broker: Broker, it_broker: Broker,
                         collector: MakeCollector) -> None:
    tx_cfg = _card(diode, "tx-card", diode.tx_doc(mqtt={"carousel_period": CAROUSEL}))
    rx_cfg = _card(diode, "rx-card", diode.rx_doc())
    rx = diode.start("rx", rx_cfg)
    tx = diode.start("tx", tx_cfg)
    live = collector(it_broker, ["plant/#", "probe/#"])
    diode.wait_ready(live)
    state = [(f"plant/state/{i}", b"v1-%d" % i, 1, True) for i in range(50)]
    publish_all(ot_broker.host, ot_broker.port, state)
    live.wait_count(50, "plant/state/", 10)

    # TX swap: power pulled, a new card with the copied folder boots (new epoch, same key).
    diode.kill(tx)
    tx2 = diode.start("tx", _new_card_from(tx_cfg, "tx-card-2"), "tx2")
    diode.wait_status(rx, lambda st: st["link"]["epochs"] == 2 and st["link_state"] == "UP",
                      10, "RX following the new TX epoch")
    publish_all(ot_broker.host, ot_broker.port, [("plant/event", b"after tx swap", 1, False)])
    live.wait_for(lambda m: any(x.payload == b"after tx swap" for x in m), 10,
                  "data through the new TX")
    assert "TX restarted" in rx.log()

    # RX swap: power pulled; its IT broker comes back empty (no persistence).
    diode.kill(rx)
    it_broker.restart()
    swapped = time.monotonic()
    diode.start("rx", _new_card_from(rx_cfg, "rx-card-2"), "rx2")
    fresh = collector(it_broker, ["plant/state/#"])
    got = fresh.wait_count(50, "plant/state/", CAROUSEL + 5)
    took = time.monotonic() - swapped
    assert {m.topic: m.payload for m in got} == {t: p for t, p, _, _ in state}
    assert took <= CAROUSEL + 5, took
    fresh2 = collector(it_broker, ["plant/event"])
    publish_all(ot_broker.host, ot_broker.port, [("plant/event", b"after rx swap 2", 1, False)])
    fresh2.wait_for(lambda m: any(x.payload == b"after rx swap 2" for x in m), 10,
                    "data through the new RX")
    assert tx2.running(), "nothing may be done on TX: it kept running"
