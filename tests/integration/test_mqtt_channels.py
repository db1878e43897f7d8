"""Several channels, each OT broker to its own IT broker with topic mapping; and
mutual TLS to a broker that requires a client certificate."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from diode_tools.sim.certs import make_pki
from diode_tools.sim.mosquitto import Broker, BrokerOptions
from tests.integration.conftest import Collector, Diode, publish_all

MakeCollector = Callable[..., Collector]


def test_two_channels_with_prefix_and_rewrite(diode: Diode, make_broker: Callable[..., Broker],
                                              collector: MakeCollector) -> None:
    ot_a, ot_b = make_broker(name="OT a"), make_broker(name="OT b")
    it_a, it_b = make_broker(name="IT a"), make_broker(name="IT b")
    tx = diode.tx_doc(broker=ot_a)
    tx["mqtt"] = [{**tx["mqtt"][0], "name": "a"},
                  {**tx["mqtt"][0], "name": "b", "port": ot_b.port, "topics": ["plant/#"]}]
    rx = diode.rx_doc(broker=it_a)
    rx["mqtt"] = [{**rx["mqtt"][0], "name": "a", "topic_prefix": "site1/"},
                  {**rx["mqtt"][0], "name": "b", "port": it_b.port,
                   "topic_rewrite": [["plant/", "site2/plant/"]]}]
    rx_agent = diode.start("rx", rx)
    diode.start("tx", tx)
    out_a, out_b = collector(it_a, ["site1/#"]), collector(it_b, ["site2/#", "other/#"])
    diode.wait_up(rx_agent)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (out_a.data("site1/") and out_b.data("site2/")):
        publish_all(ot_a.host, ot_a.port, [("probe/a", b"p", 0, False)])
        publish_all(ot_b.host, ot_b.port, [("plant/probe", b"p", 0, False)])
        time.sleep(0.3)
    publish_all(ot_a.host, ot_a.port, [("x/1", b"from a", 1, True)])
    publish_all(ot_b.host, ot_b.port, [("plant/1", b"from b", 1, True),
                                       ("elsewhere/1", b"not subscribed", 1, False)])
    [a] = out_a.wait_count(1, "site1/x/", 10)
    [b] = out_b.wait_count(1, "site2/plant/1", 10)
    assert (a.topic, a.payload, a.retain) == ("site1/x/1", b"from a", True)
    assert (b.topic, b.payload, b.retain) == ("site2/plant/1", b"from b", True)
    time.sleep(0.5)
    assert not out_b.data("other/") and not out_a.data("site1/site2")
    st = diode.wait_status(rx_agent, lambda s: set(s["sinks"]) == {"a", "b"}, 5, "two sinks")
    assert st["tx"]["sources"] == {"mqtt:a": "connected", "mqtt:b": "connected"}


def test_mutual_tls_to_the_ot_broker(diode: Diode, make_broker: Callable[..., Broker],
                                     it_broker: Broker, collector: MakeCollector,
                                     tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    ot = make_broker(BrokerOptions(tls=pki.server_tls, require_certificate=True), name="OT mTLS")
    rx = diode.start_rx()
    diode.start("tx", diode.tx_doc(broker=ot, mqtt={
        "tls": True, "ca_file": str(pki.ca_cert), "cert_file": str(pki.client_cert),
        "key_file": str(pki.client_key)}))
    out = collector(it_broker, ["m/#"])
    diode.wait_up(rx)
    pub = ["mosquitto_pub", "-h", "localhost", "-p", str(ot.port), "--cafile", str(pki.ca_cert),
           "--cert", str(pki.client_cert), "--key", str(pki.client_key), "-q", "1"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not out.data("m/"):
        subprocess.run([*pub, "-t", "m/probe", "-m", "p"], check=True, timeout=10)
        time.sleep(0.3)
    subprocess.run([*pub, "-t", "m/x", "-m", "over mutual TLS"], check=True, timeout=10)
    got = out.wait_count(1, "m/x", 10)
    assert got[0].payload == b"over mutual TLS"


@pytest.mark.slow
def test_a_flooded_channel_does_not_starve_a_quiet_one(
        diode: Diode, make_broker: Callable[..., Broker], it_broker: Broker,
        collector: MakeCollector) -> None:
    """Each channel owns its queue: a flood past one channel's queue_limit on a slow
    link drops (and counts) only that channel's messages."""
    ot_flood, ot_quiet = make_broker(name="OT flood"), make_broker(name="OT quiet")
    tx = diode.tx_doc(broker=ot_flood, link={"bitrate": 2_000_000})
    base = {**tx["mqtt"][0], "qos": 0, "queue_limit": 1000}
    tx["mqtt"] = [{**base, "name": "flood", "topics": ["flood/#"]},
                  {**base, "name": "quiet", "port": ot_quiet.port, "topics": ["quiet/#"]}]
    rx = diode.rx_doc(broker=it_broker)
    rx["mqtt"] = [{**rx["mqtt"][0], "name": "flood"}, {**rx["mqtt"][0], "name": "quiet"}]
    rx_agent = diode.start("rx", rx)
    tx_agent = diode.start("tx", tx)
    out = collector(it_broker, ["quiet/#", "flood/#"])
    diode.wait_up(rx_agent)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not out.data("quiet/probe"):
        publish_all(ot_quiet.host, ot_quiet.port, [("quiet/probe", b"p", 0, False)])
        time.sleep(0.3)
    start = len(out.data("quiet/m"))
    flood = [(f"flood/{i % 50}", bytes(1000), 0, False) for i in range(20_000)]
    quiet = [(f"quiet/m/{i}", str(i).encode(), 0, False) for i in range(200)]
    publish_all(ot_flood.host, ot_flood.port, flood)
    publish_all(ot_quiet.host, ot_quiet.port, quiet)
    got = out.wait_count(start + 200, "quiet/m/", 60)
    assert [m.payload for m in got[start:]] == [str(i).encode() for i in range(200)]
    # TX may still be reading the flood from its broker when the quiet ones are through
    st = diode.wait_status(
        tx_agent, lambda s: s["counters"]["mqtt:flood.received"] == 20_000
        and s["counters"]["mqtt:flood.queue_dropped"] > 0, 30,
        "all 20,000 flood messages received, and some counted as dropped")
    assert st["counters"]["mqtt:quiet.queue_dropped"] == 0
    assert len(out.data("flood/")) < 20_000
