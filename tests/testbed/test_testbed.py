"""The whole MQTT path over a real one-way Ethernet link between two network namespaces,
and a syslog channel beside it.

```
publisher ─► OT broker ─► diode tx ═ veth (tbf, nft loss) ═► diode rx ─► IT broker ─► counter
logger ─────(syslog)───────┘                                         └─► syslog collector
             (TX namespace)                                 (RX namespace, nft egress: count + drop)
```

Each run is `scripts/testbed.sh --duration 5 --json` (about 10 s). Root only:
without root or tools these tests fail (conftest), never skip.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from diode_tools.sim.testbed import NFT_RULES, Topology, destroy, in_ns, nft_counter, sh

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "testbed.sh"


def run_testbed(*args: str) -> dict[str, Any]:
    res = subprocess.run(["bash", str(SCRIPT), "--duration", "5", "--json", *args],
                         capture_output=True, text=True, timeout=240, cwd=REPO)
    assert res.returncode == 0, (f"testbed.sh {' '.join(args)} exited {res.returncode}\n"
                                 f"--- stdout ---\n{res.stdout[-3000:]}\n"
                                 f"--- stderr ---\n{res.stderr[-8000:]}")
    summary: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return summary


@pytest.fixture(scope="module")
def clean() -> dict[str, Any]:
    return run_testbed()


@pytest.fixture(scope="module")
def lossy() -> dict[str, Any]:
    return run_testbed("--loss", "0.05", "--rate", "20000000")


def test_clean_link_delivers_every_message(clean: dict[str, Any]) -> None:
    assert clean["published"] > 0
    assert clean["delivered"] == clean["published"], clean
    assert clean["frames_lost"] == 0 and clean["tx_send_errors"] == 0, clean
    assert clean["tx_exit"] == 0 and clean["rx_exit"] == 0, clean


def test_syslog_crosses_beside_mqtt(clean: dict[str, Any]) -> None:
    assert clean["syslog_sent"] == 100 and clean["syslog_delivered"] == 100, clean


def test_rx_sends_nothing_on_the_link(clean: dict[str, Any], lossy: dict[str, Any]) -> None:
    """The nftables egress counter on RX's link port: what RX's kernel tried to send
    (ARP replies, IPv6 RS/DAD/MLD, ICMP), from before link-up to after shutdown."""
    for run in (clean, lossy):
        assert run["rx_link_tx_packets"] == 0, run
        assert run["link_in_packets"] > 0, run


def test_tx_has_no_listening_or_bound_socket_but_its_configured_listeners(
        clean: dict[str, Any]) -> None:
    """Listening TCP and bound UDP sockets in TX's namespace, the OT broker's excluded;
    TX's syslog listeners are allowed only as configured (address and port exactly)."""
    assert clean["tx_syslog_listeners"] == clean["tx_syslog_listeners_configured"], clean
    assert clean["tx_listening_sockets"] == 0, (
        f"TX holds {clean['tx_listening_sockets']} socket(s) that can receive: "
        f"{clean['tx_sockets']}; transport {clean['tx_transport']!r}. An ordinary UDP "
        "socket binds an ephemeral port at its first send: diode tx must send through "
        "agent.transport.udp_raw.RawUdpTx")


def test_lossy_rate_limited_link_still_delivers(lossy: dict[str, Any]) -> None:
    """5 % random loss on RX ingress, 20 Mbit/s tbf on TX; repeat 3 carries it."""
    assert lossy["link_loss_dropped"] > 0, lossy
    assert 0.02 < lossy["link_loss_dropped"] / lossy["link_in_packets"] < 0.09, lossy
    assert lossy["published"] > 0
    assert lossy["delivered"] >= 0.99 * lossy["published"], lossy
    assert lossy["tbf_dropped"] == 0, lossy  # TX paces under the link rate


def test_egress_counter_sees_an_unprepared_rx() -> None:
    """Control: the same counter on an RX port left with IPv6 and ARP on does count
    what the kernel sends by itself, so the zero above means RX was silent."""
    topo = Topology.new()
    try:
        sh("ip", "netns", "add", topo.tx_ns)
        sh("ip", "netns", "add", topo.rx_ns)
        sh("ip", "link", "add", topo.tx_if, "netns", topo.tx_ns, "type", "veth",
           "peer", "name", topo.rx_if, "netns", topo.rx_ns)
        sh(*in_ns(topo.rx_ns, "nft", "-f", "-"),
           stdin=NFT_RULES.format(dev=topo.rx_if, loss_rule=""))
        sh("ip", "-n", topo.tx_ns, "link", "set", topo.tx_if, "up")
        sh("ip", "-n", topo.rx_ns, "link", "set", topo.rx_if, "up")
        deadline = time.monotonic() + 10
        while nft_counter(topo, "rx_sent")["packets"] == 0:
            assert time.monotonic() < deadline, "an RX port with IPv6 on sent nothing in 10 s"
            time.sleep(0.2)
    finally:
        destroy(topo)


def test_a_flapped_tx_interface_heals_and_loses_nothing_spooled() -> None:
    """`ip link set dev down; up` on TX (a re-plugged cable) flushes the permanent
    neighbour and the route. TX puts them back by itself, and the messages whose sends
    failed meanwhile stay in its spool until they really went out."""
    r = run_testbed("--spool", "--flap", "1.5,2")
    assert r["tx_send_errors"] > 0, r  # the flap really broke sending
    assert r["tx_interface_restored"] >= 1, r
    assert r["delivered"] == r["published"] > 0, r
    assert r["link_state"] in ("UP", "DEGRADED"), r  # back; the loss is within its window
