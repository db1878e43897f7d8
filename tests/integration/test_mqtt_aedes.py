"""Both agents between two brokers that are not Mosquitto: aedes (Node.js, MQTT 3.1.1)
as the OT and as the IT broker, so nothing passes only because one implementation's
habits are baked in.

```
paho publisher ─► aedes (OT) ─► diode tx ══ UDP ══► diode rx ─► aedes (IT) ─► paho 3.1.1 collector
```
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as paho
import pytest

from diode_tools.sim.aedes import AedesBroker
from tests.integration.conftest import Collector, Diode, _add_log_source, publish_all

pytestmark = pytest.mark.timeout(90)

V311 = paho.MQTTv311
MakeCollector = Callable[..., Collector]


@pytest.fixture
def aedes(request: pytest.FixtureRequest) -> Iterator[Callable[[str], AedesBroker]]:
    made: list[AedesBroker] = []

    def make(name: str) -> AedesBroker:
        broker = AedesBroker().start()
        made.append(broker)
        _add_log_source(request, f"aedes {name} log", broker.log_text)
        return broker
    yield make
    for b in made:
        b.close()


def test_aedes_on_both_sides(diode: Diode, aedes: Callable[[str], AedesBroker],
                             collector: MakeCollector) -> None:
    ot, it = aedes("OT"), aedes("IT")
    limit = 128 * 1024
    common: dict[str, Any] = {"protocol": "3.1.1", "max_message_size": limit}
    rx = diode.start("rx", diode.rx_doc(broker=it, mqtt=common))  # type: ignore[arg-type]
    tx = diode.start("tx", diode.tx_doc(broker=ot,  # type: ignore[arg-type]
                                        mqtt={**common, "qos": 2, "carousel_period": 2.0}))
    sub = collector(it, ["#"], protocol=V311, qos=2)  # type: ignore[arg-type]
    diode.wait_up(rx)
    diode.wait_ready(sub, protocol=V311, broker=ot)  # type: ignore[arg-type]

    # every size up to the limit, every QoS, retained and not
    sizes = [0, 1, 1400, 65_536, limit]
    msgs = [(f"a/size/{n}", bytes([n % 251]) * n, i % 3, n > 0)
            for i, n in enumerate(sizes)]
    publish_all(ot.host, ot.port, msgs, protocol=V311)
    got = {m.topic: m.payload for m in sub.wait_count(len(msgs), "a/size/", timeout=15)}
    assert got == {t: p for t, p, _, _ in msgs}
    # past the limit: refused on TX, nothing on IT, the channel goes on
    publish_all(ot.host, ot.port, [("a/big", b"x" * (limit + 1), 1, False)], protocol=V311)
    diode.wait_status(tx, lambda s: s["counters"].get("mqtt:plant.too_large") == 1, 10,
                      "the large message refused")

    # a stream in order at each QoS
    n = 600
    # one QoS per topic: MQTT orders messages per topic and QoS, not across QoS levels
    stream = [(f"a/stream/{i % 5}", b"%04d" % i, i % 5 % 3, False) for i in range(n)]
    publish_all(ot.host, ot.port, stream, protocol=V311)
    arrived = sub.wait_count(n, "a/stream/", timeout=30)
    for topic in {t for t, _, _, _ in stream}:
        assert [m.payload for m in arrived if m.topic == topic] == \
            [p for t, p, _, _ in stream if t == topic]

    # a topic that becomes retained mid-run is retained on IT within a carousel period,
    # and a cleared one is cleared
    publish_all(ot.host, ot.port, [("a/late", b"retained now", 1, True),
                                   ("a/size/1", b"", 1, True)], protocol=V311)
    deadline = time.monotonic() + 8
    while True:
        fresh = collector(it, ["a/#"], protocol=V311)  # type: ignore[arg-type]
        time.sleep(0.5)
        view = {m.topic: m.payload for m in fresh.data("a/") if m.retain}
        fresh.stop()
        want = {t: p for t, p, _, r in msgs if r and t != "a/size/1"}
        if view == {**want, "a/late": b"retained now"}:
            break
        assert time.monotonic() < deadline, f"IT's retained state: {sorted(view)}"
    assert not sub.data("a/big")
    st = rx.status()
    assert st is not None and st["counters"]["lost"] == 0
    assert st["sinks"]["plant"]["outages"] == 0
