"""An RX that starts while TX is already sending shows a clean link UP, never DEGRADED.

TX starts first, with copies of each frame spread wide (interleave 128: the
three copies of a heartbeat go out over about 0.2 s) and heartbeats every
0.1 s, so RX's first datagram almost surely falls between the copies of some
heartbeat: the case that raised a false DEGRADED on a cold, busy machine
(see tests/unit/link/test_health_join.py).
"""

from __future__ import annotations

import time

from tests.integration.conftest import Diode


def test_rx_started_after_tx_sees_a_clean_link_up(diode: Diode) -> None:
    tx = diode.start_tx(link={"interleave": 128, "heartbeat_interval": 0.1})
    diode.wait_status(tx, lambda st: st.get("counters", {}).get("datagrams", 0) > 30, 10,
                      "TX sending")
    time.sleep(1.0)
    doc = diode.rx_doc(link={"reorder_timeout": 2.0})  # copies arrive up to ~0.2 s late
    doc["board"] = {"leds": "sim"}
    rx = diode.start("rx", doc)
    diode.wait_up(rx)
    time.sleep(3.0)
    st = diode.wait_status(rx, lambda st: st.get("link_state") == "UP", 2, "still UP")
    log = rx.log()
    assert "-> DEGRADED" not in log, log[-3000:]
    assert st["counters"]["lost"] == 0
    assert st["datagram_loss"] == 0.0
    assert st["board"]["leds"]["link"] == "on"
    diode.stop(rx)
    diode.stop(tx)
