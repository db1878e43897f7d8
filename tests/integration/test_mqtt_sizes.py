"""Message sizes and the IT broker's limits, with real Mosquitto brokers and the agents
as processes: no size wedges a channel, and what cannot be carried is counted, logged
with its topic, and never sent again and again.

```
publisher ─► OT Mosquitto ─► diode tx ══ UDP ══► diode rx ─► IT Mosquitto (max_packet_size,
 (0 B .. past max_message_size)  (memory | spool)    (memory | spool)   max_inflight_messages) ─► collector
```
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from agent.spool import write_spool_key
from diode_tools.sim.mosquitto import Broker, BrokerOptions
from tests.integration.conftest import Collector, Diode, publish_all

pytestmark = pytest.mark.timeout(90)

MakeCollector = Callable[..., Collector]
LIMIT = 256 * 1024  # max_message_size in these tests


def spooled(diode: Diode, doc: dict[str, Any], role: str, max_bytes: int = 4 << 20
            ) -> dict[str, Any]:
    """`doc` with a [spool] of its own; 4 MiB, so the store's default segment (256 KiB)
    would not hold the largest message: the channel must size it."""
    key = diode.tmp / "spool.key"
    if not key.exists():
        write_spool_key(key)
    doc["spool"] = {"dir": str(diode.tmp / f"spool-{role}"), "key_file": str(key),
                    "max_bytes": max_bytes, "fsync": "never"}
    return doc


def start_pair(diode: Diode, tx_spool: bool, rx_spool: bool, *, tx: dict[str, Any] | None = None,
               rx: dict[str, Any] | None = None, it: Broker | None = None,
               ot: Broker | None = None, spool_bytes: int = 8 << 20) -> tuple[Any, Any]:
    rx_doc = diode.rx_doc(mqtt=rx, broker=it)
    tx_doc = diode.tx_doc(mqtt=tx, broker=ot)
    if rx_spool:
        spooled(diode, rx_doc, "rx", spool_bytes)
    if tx_spool:
        spooled(diode, tx_doc, "tx", spool_bytes)
    rx_agent = diode.start("rx", rx_doc)
    tx_agent = diode.start("tx", tx_doc)
    return tx_agent, rx_agent


def flows_on(diode: Diode, broker: Broker, sub: Collector, prefix: str, n: int = 50,
             qos: int = 1) -> None:
    """The channel still carries everything: `n` later messages all arrive."""
    publish_all(broker.host, broker.port,
                [(f"{prefix}/{i}", b"later %d" % i, qos, False) for i in range(n)])
    got = sub.wait_count(n, f"{prefix}/", timeout=20)
    assert sorted(m.payload for m in got) == sorted(b"later %d" % i for i in range(n))


@pytest.mark.parametrize("tx_spool, rx_spool", [(False, False), (True, True), (True, False),
                                                (False, True)],
                         ids=["memory", "spool-both", "spool-tx", "spool-rx"])
def test_every_size_up_to_the_limit_arrives_and_larger_ones_are_refused_once(
        diode: Diode, ot_broker: Broker, it_broker: Broker, collector: MakeCollector,
        tx_spool: bool, rx_spool: bool) -> None:
    limits = {"max_message_size": LIMIT}
    tx, rx = start_pair(diode, tx_spool, rx_spool, tx={**limits, "carousel_period": 1.0},
                        rx=limits, spool_bytes=4 << 20)
    sub = collector(it_broker, ["size/#", "big/#", "later/#", "probe/#"])
    diode.wait_up(rx)
    diode.wait_ready(sub)

    sizes = [0, 1, 1000, 1400, 65_536, LIMIT - 1, LIMIT]
    msgs = [(f"size/{n}", bytes([n % 251]) * n, 1, n > 0) for n in sizes]
    publish_all(ot_broker.host, ot_broker.port, msgs)
    got = {m.topic: m for m in sub.wait_count(len(sizes), "size/", timeout=20)}
    for topic, payload, _, retain in msgs:
        assert got[topic].payload == payload, (topic, len(got[topic].payload))
        assert got[topic].retain is retain

    # Past the limit: refused on TX, once each, acknowledged, never in the carousel.
    publish_all(ot_broker.host, ot_broker.port, [("big/over", b"x" * (LIMIT + 1), 1, False),
                                                 ("big/huge", b"y" * (16 << 20), 1, True)])
    st = diode.wait_status(tx, lambda s: s["counters"].get("mqtt:plant.too_large") == 2, 10,
                           "two messages refused as too large")
    log = tx.log()
    for topic in ("big/over", "big/huge"):
        assert f"message on '{topic}'" in log and "max_message_size" in log, log
    assert "Fix: raise max_message_size" in log
    flows_on(diode, ot_broker, sub, "later")
    assert not sub.data("big/"), "a message past max_message_size reached IT"
    # three carousel rounds later: not re-sent, not counted again
    datagrams = st["counters"]["datagrams"]
    st = diode.wait_status(tx, lambda s: s["counters"]["datagrams"] > datagrams + 30, 10,
                           "a few carousel rounds")
    assert st["counters"]["mqtt:plant.too_large"] == 2
    assert st["counters"]["bytes"] < 4 * (16 << 20), "the refused message went on the link"
    rx_st = rx.status()
    assert rx_st is not None and rx_st["sinks"]["plant"]["too_large"] == 0
    assert rx_st["counters"]["lost"] == 0

    if tx_spool:
        # TX's lasting session: had the refusals not been acknowledged, the OT broker
        # would deliver them again to the restarted TX. (A retained one it would deliver
        # from its retained store at every subscribe, acknowledged or not: clear it.)
        publish_all(ot_broker.host, ot_broker.port, [("big/huge", b"", 1, True)])
        diode.stop(tx)
        tx2 = diode.start("tx", tx.config, "tx2")
        diode.wait_ready(sub)
        st = diode.wait_status(tx2, lambda s: "mqtt:plant.too_large" in s["counters"], 10,
                               "TX restarted")
        flows_on(diode, ot_broker, sub, "later/restart", n=10)
        st = tx2.status()
        assert st is not None and st["counters"]["mqtt:plant.too_large"] == 0, \
            "the OT broker redelivered a refused message"


def test_spool_too_small_for_the_largest_message_is_a_config_error(
        diode: Diode, ot_broker: Broker) -> None:
    doc = spooled(diode, diode.tx_doc(mqtt={"max_message_size": 1 << 20}), "tx",
                  max_bytes=2 << 20)
    tx = diode.start("tx", doc)
    assert tx.wait_exit(10) == 2
    log = tx.log()
    assert "[spool] max_bytes" in log and "max_message_size" in log and "Fix:" in log, log


@pytest.mark.parametrize("rx_spool", [False, True], ids=["memory", "spool"])
def test_it_broker_maximum_packet_size_is_honoured(
        diode: Diode, ot_broker: Broker, make_broker: Callable[..., Broker],
        collector: MakeCollector, rx_spool: bool) -> None:
    it = make_broker(BrokerOptions(max_packet_size=10_000), name="IT (max_packet_size 10000)")
    tx, rx = start_pair(diode, False, rx_spool, it=it)
    sub = collector(it, ["fit/#", "later/#", "probe/#"])
    diode.wait_up(rx)
    diode.wait_ready(sub, broker=ot_broker)
    msgs = [("fit/small", b"s" * 9000, 1, False), ("fit/large", b"L" * 20_000, 1, False),
            ("fit/large-retained", b"R" * 50_000, 1, True), ("fit/after", b"a", 1, False)]
    publish_all(ot_broker.host, ot_broker.port, msgs)
    got = sub.wait_count(2, "fit/", timeout=10)
    assert sorted(m.topic for m in got) == ["fit/after", "fit/small"]
    st = diode.wait_status(rx, lambda s: s["sinks"]["plant"]["too_large_for_broker"] >= 2, 10,
                           "two messages counted as too large for the IT broker")
    assert st["sinks"]["plant"]["outages"] == 0, "RX was disconnected"
    assert "message on 'fit/large'" in rx.log() and "maximum packet size (10000" in rx.log()
    flows_on(diode, ot_broker, sub, "later")
    st = rx.status()
    assert st is not None and st["sinks"]["plant"]["outages"] == 0
    assert "connection lost" not in rx.log()


@pytest.mark.parametrize("qos, rx_spool", [(1, False), (2, False), (1, True), (2, True)],
                         ids=["qos1-memory", "qos2-memory", "qos1-spool", "qos2-spool"])
def test_it_broker_receive_maximum_is_honoured(
        diode: Diode, ot_broker: Broker, make_broker: Callable[..., Broker],
        collector: MakeCollector, qos: int, rx_spool: bool) -> None:
    it = make_broker(BrokerOptions(max_inflight_messages=20), name="IT (max_inflight 20)")
    tx, rx = start_pair(diode, False, rx_spool, it=it, tx={"qos": qos})
    sub = collector(it, ["inflight/#", "probe/#"], qos=qos)
    diode.wait_up(rx)
    diode.wait_ready(sub)
    n = 3000
    publish_all(ot_broker.host, ot_broker.port,
                [(f"inflight/{i % 7}", b"%05d" % i, qos, False) for i in range(n)])
    got = sub.wait_count(n, "inflight/", timeout=40)
    assert sorted({int(m.payload) for m in got}) == list(range(n))
    st = diode.wait_status(rx, lambda s: s["sinks"]["plant"]["published"] >= n, 10,
                           "every message acknowledged by the IT broker")
    assert st["sinks"]["plant"]["refused"] == 0 and st["sinks"]["plant"]["outages"] == 0


@pytest.mark.parametrize("rx_spool", [False, True], ids=["memory", "spool"])
def test_publishes_the_it_broker_refuses_are_counted_as_refused(
        diode: Diode, ot_broker: Broker, make_broker: Callable[..., Broker],
        collector: MakeCollector, rx_spool: bool) -> None:
    acl = ["topic write ok/#", "topic write probe/#", "topic write later/#",
           "topic write diode/#", "topic read #"]
    it = make_broker(BrokerOptions(acl=acl), name="IT (ACL)")
    tx, rx = start_pair(diode, False, rx_spool, it=it)
    sub = collector(it, ["ok/#", "denied/#", "later/#", "probe/#"])
    diode.wait_up(rx)
    diode.wait_ready(sub)
    publish_all(ot_broker.host, ot_broker.port,
                [("denied/x", b"no", 1, False), ("ok/x", b"yes", 1, False),
                 ("denied/y", b"no", 1, False)])
    sub.wait_count(1, "ok/", timeout=10)
    st = diode.wait_status(rx, lambda s: s["sinks"]["plant"]["refused"] == 2, 10,
                           "two refusals counted")
    assert st["sinks"]["plant"]["published"] >= 1
    log = rx.log()
    assert "refused a PUBLISH on 'denied/" in log and "ACL" in log, log
    flows_on(diode, ot_broker, sub, "later")
    assert not sub.data("denied/")
    st = rx.status()
    assert st is not None and st["sinks"]["plant"]["refused"] == 2
