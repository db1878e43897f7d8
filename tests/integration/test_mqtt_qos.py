"""QoS 2 goes through paho's own flow on TX (not the fast PUBLISH path) and still arrives."""

from __future__ import annotations

from collections.abc import Callable

from diode_tools.sim.mosquitto import Broker
from tests.integration.conftest import Collector, Diode, publish_all

MakeCollector = Callable[..., Collector]


def test_qos2_subscription_carries_every_message_in_order(
        diode: Diode, ot_broker: Broker, it_broker: Broker, collector: MakeCollector) -> None:
    diode.start_rx()
    diode.start_tx(mqtt={"qos": 2})
    out = collector(it_broker, ["q2/#", "probe/#"])
    diode.wait_ready(out)
    msgs = [(f"q2/{i % 3}", b"m%04d" % i, 2, False) for i in range(300)]
    publish_all(ot_broker.host, ot_broker.port, msgs)
    got = out.wait_count(300, "q2/", timeout=20)
    assert [(m.topic, m.payload) for m in got] == [(t, p) for t, p, _, _ in msgs]
