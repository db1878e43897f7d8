"""State that converges and deadlines that hold, with real brokers and agent processes:
retained clears reach IT even when RX missed them, a 3.1.1 OT broker's retained
topics reach IT as retained, expiry counts every second a message spent in the
agents and on the link, and RX's status says "unknown" for TX while the link is down.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from diode_tools.sim.mosquitto import Broker
from tests.integration.conftest import Collector, Diode, Received, _env, diode_cmd, publish_all

pytestmark = pytest.mark.timeout(90)

MakeCollector = Callable[..., Collector]


def retained_view(broker: Broker, collector: MakeCollector, prefix: str,
                  protocol: paho.MQTTProtocolVersion = paho.MQTTv5) -> dict[str, bytes]:
    """What a fresh subscriber gets as retained state under `prefix`."""
    fresh = collector(broker, [prefix + "#"], protocol=protocol)
    time.sleep(0.4)
    return {m.topic: m.payload for m in fresh.data(prefix) if m.retain}


def flows_on(broker: Broker, sub: Collector, prefix: str, n: int = 30,
             protocol: paho.MQTTProtocolVersion = paho.MQTTv5) -> None:
    publish_all(broker.host, broker.port,
                [(f"{prefix}/{i}", b"later %d" % i, 1, False) for i in range(n)],
                protocol=protocol)
    assert len(sub.wait_count(n, f"{prefix}/", timeout=20)) == n


def test_a_clear_published_while_rx_is_down_reaches_it(
        diode: Diode, ot_broker: Broker, it_broker: Broker, collector: MakeCollector) -> None:
    period = 1.5
    rx = diode.start_rx()
    diode.start_tx(mqtt={"carousel_period": period, "tombstone_period": 60})
    sub = collector(it_broker)
    diode.wait_up(rx)
    diode.wait_ready(sub)
    publish_all(ot_broker.host, ot_broker.port,
                [("st/keep", b"k", 1, True), ("st/clear", b"c", 1, True)])
    sub.wait_count(2, "st/", timeout=10)
    assert retained_view(it_broker, collector, "st/") == {"st/keep": b"k", "st/clear": b"c"}

    diode.stop(rx)
    publish_all(ot_broker.host, ot_broker.port, [("st/clear", b"", 1, True)])
    time.sleep(0.5)  # the clear went over the link while nobody listened
    rx2 = diode.start_rx(name="rx2")
    diode.wait_up(rx2)

    def cleared() -> bool:
        return retained_view(it_broker, collector, "st/") == {"st/keep": b"k"}
    deadline = time.monotonic() + period + 5
    while not cleared():
        assert time.monotonic() < deadline, "the clear never reached IT"
        time.sleep(0.3)
    # The tombstone is re-sent each round, but published once per connection (the clear
    # may also come late from TX's recovery window, unretained: not a tombstone).
    def tombstones() -> int:
        return len([m for m in sub.data("st/clear") if m.payload == b"" and m.retain])
    n = tombstones()
    time.sleep(2 * period)
    assert tombstones() == n
    flows_on(ot_broker, sub, "later")


def test_311_topic_that_becomes_retained_mid_run_reaches_it_as_retained(
        diode: Diode, ot_broker: Broker, it_broker: Broker, collector: MakeCollector) -> None:
    v311 = paho.MQTTv311
    period = 2.0
    rx = diode.start_rx()
    tx = diode.start_tx(mqtt={"protocol": "3.1.1", "carousel_period": period})
    sub = collector(it_broker)
    diode.wait_up(rx)
    diode.wait_ready(sub, protocol=v311)
    publish_all(ot_broker.host, ot_broker.port, [("late/x", b"now retained", 1, True)],
                protocol=v311)
    [live] = sub.wait_count(1, "late/", timeout=10)
    assert live.payload == b"now retained"  # live: 3.1.1 cleared the flag
    t0 = time.monotonic()
    while retained_view(it_broker, collector, "late/") != {"late/x": b"now retained"}:
        assert time.monotonic() - t0 < period + 4, "never retained on IT"
        time.sleep(0.3)
    # the status file is written every status_interval: it may not show the find yet
    diode.wait_status(tx, lambda s: s["counters"].get("mqtt:plant.retained_found", 0) >= 1,
                      5, "TX counting the retained message it found")
    flows_on(ot_broker, sub, "later", protocol=v311)
    # each later message stays an event: the store read found nothing new
    assert retained_view(it_broker, collector, "later/") == {}


def _expiring(seconds: int) -> Properties:
    p = Properties(PacketTypes.PUBLISH)
    p.MessageExpiryInterval = seconds
    return p


def test_expiry_on_a_throttled_link_counts_the_time_on_the_link(
        diode: Diode, ot_broker: Broker, it_broker: Broker, collector: MakeCollector) -> None:
    # 400 kbit/s and three copies of each frame: about 16 kB of messages a second
    rx = diode.start_rx()
    tx = diode.start_tx(link={"bitrate": 400_000})
    sub = collector(it_broker)
    diode.wait_up(rx)
    diode.wait_ready(sub)
    n, expiry = 150, 2
    t0 = time.monotonic()
    publish_all(ot_broker.host, ot_broker.port,
                [(f"exp/{i:03d}", bytes(1000), 0, False, _expiring(expiry)) for i in range(n)])
    t1 = time.monotonic()  # each message was published between t0 and t1
    st = diode.wait_status(
        tx, lambda s: s["counters"].get("mqtt:plant.expired", 0) > 0
        and s["queue"]["queued"] == 0, 30, "the burst drained, some messages expired")
    time.sleep(1.0)
    got = sub.data("exp/")
    assert 0 < len(got) < n
    for m in got:
        # its true age lies between these two
        oldest, youngest = m.at - t0, m.at - t1
        # the slack: what no clock measures (a datagram waiting in RX's socket buffer, the
        # IT broker and this subscriber), up to a few hundred ms on a loaded machine
        slack = 0.75
        assert youngest <= expiry + slack, \
            f"{m.topic} arrived {youngest:.2f}-{oldest:.2f} s old with a {expiry} s expiry"
        # what is left is rounded up to whole seconds: at most 1 s more than the truth
        left = m.properties.MessageExpiryInterval
        assert youngest + left <= expiry + 1 + slack, \
            f"{m.topic}: {youngest:.2f}-{oldest:.2f} s old, {left} s left"
    expired = st["counters"]["mqtt:plant.expired"]
    rx_expired = rx.status()["sinks"]["plant"]["expired"]  # type: ignore[index]
    assert len(got) + expired + rx_expired == n, (len(got), expired, rx_expired)
    flows_on(ot_broker, sub, "later", n=20)


def test_the_carousel_never_brings_back_an_expired_retained_message(
        diode: Diode, ot_broker: Broker, it_broker: Broker, collector: MakeCollector) -> None:
    period = 1.0
    rx = diode.start_rx()
    diode.start_tx(mqtt={"carousel_period": period})
    sub = collector(it_broker)
    diode.wait_up(rx)
    diode.wait_ready(sub)
    publish_all(ot_broker.host, ot_broker.port,
                [("ret/short", b"short-lived", 1, True, _expiring(2)),
                 ("ret/long", b"stays", 1, True)])
    sub.wait_count(2, "ret/", timeout=10)
    time.sleep(2.5)  # ret/short expired everywhere
    diode.stop(rx)
    it_broker.stop()
    it_broker.start()  # no persistence: IT holds nothing now
    rx2 = diode.start_rx(name="rx2")
    fresh = collector(it_broker, ["ret/#"])
    diode.wait_up(rx2)
    fresh.wait_count(1, "ret/long", timeout=period + 5)
    time.sleep(3 * period)
    # the expired message never comes back, neither from the carousel nor late from TX's
    # recovery window (its expiry counts the wait there); ret/long comes retained (and
    # may come late too, unretained: this RX has no state to place it by)
    got = fresh.data("ret/")
    assert "ret/short" not in [m.topic for m in got], got
    assert [m.topic for m in got if m.retain] == ["ret/long"], got


def test_rx_status_shows_tx_sources_unknown_while_the_link_is_down(
        diode: Diode, it_broker: Broker, collector: MakeCollector) -> None:
    rx = diode.start_rx(link={"timeout": 1.5})
    tx = diode.start_tx()
    diode.wait_status(rx, lambda s: (s.get("tx") or {}).get("sources", {}).get("mqtt:plant")
                      == "connected", 10, "TX's source connected")
    status = collector(it_broker, ["diode/status/#"])
    tx.proc.kill()
    st = diode.wait_status(rx, lambda s: s["link_state"] == "DOWN", 6, "link DOWN")
    assert st["tx"]["sources"] == {"mqtt:plant": "unknown"}
    assert st["tx"]["last_known_sources"] == {"mqtt:plant": "connected"}
    assert st["tx"]["heartbeat_age_s"] >= 1.5

    def topic_says_unknown(msgs: list[Received]) -> bool:
        return bool(msgs) and json.loads(msgs[-1].payload)["tx"]["sources"] == {
            "mqtt:plant": "unknown"}
    status.wait_for(topic_says_unknown, 5, "status topic: TX's source unknown")
    shown = subprocess.run(diode_cmd("status", "-f", str(rx.status_file)), capture_output=True,
                           text=True, env=_env(), timeout=30)
    assert "mqtt:plant: unknown (link DOWN; last known connected" in shown.stdout, shown.stdout
    assert "STALE" not in shown.stdout
    diode.stop(rx)
    time.sleep(5.5)  # RX wrote every 0.2 s: five seconds old is stale
    shown = subprocess.run(diode_cmd("status", "-f", str(rx.status_file)), capture_output=True,
                           text=True, env=_env(), timeout=30)
    assert shown.stdout.startswith("WARNING: STALE status"), shown.stdout
