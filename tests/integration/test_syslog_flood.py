"""A syslog flood beside an MQTT channel, or an OPC UA source, on a slow link: MQTT
delivers everything, OPC UA value changes keep reaching the mirror, and every syslog
message is accounted for (forwarded, or counted where it was lost).

```
UDP flood (20k msg/s, 30x the link) ─► diode tx syslog (queue_limit 1000) ─┐
mosquitto OT ─► diode tx mqtt (QoS 1) ─────────────────────────────────────┤
asyncua plant (values changing) ─► diode tx opcua ─────────────────────────┴► 2 Mbit/s link ─► diode rx ─► IT
```

Each source owns its queue and the TX core takes from each in turn, so the flood
fills only its own queue; nothing in this test is specific to syslog.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from asyncua import Client

from diode_tools.sim.mosquitto import Broker, free_port
from diode_tools.sim.plant_opcua import PlantProcess
from diode_tools.sim.rsyslog import Rsyslog, free_udp_port
from tests.integration.conftest import Collector, Diode, publish_all
from tests.integration.test_opcua_agents import _docs, _wait_status, plant  # noqa: F401


def flood(port: int, rate: float, seconds: float) -> int:
    """RFC 3164 datagrams at `rate` for `seconds`; how many were sent."""
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            for _ in range(int(elapsed * rate) - sent):
                s.sendto(b"<14>Dec  1 12:00:00 plc7 flood: message %08d %s" % (sent, b"x" * 60),
                         ("127.0.0.1", port))
                sent += 1
            time.sleep(0.002)
        time.sleep(0.5)  # the kernel reports its drops with the next datagram read: send a few
        for _ in range(5):
            s.sendto(b"<14>Dec  1 12:00:00 plc7 flood: trailer", ("127.0.0.1", port))
            sent += 1
            time.sleep(0.05)
    return sent


def test_a_syslog_flood_does_not_starve_mqtt(diode: Diode, ot_broker: Broker, it_broker: Broker,
                                             collector: Callable[..., Collector],
                                             make_rsyslog: Callable[..., Rsyslog]) -> None:
    syslog_collector = make_rsyslog("collector")
    port = free_udp_port()
    link = {"bitrate": 2_000_000}
    tx = diode.tx_doc(link=link, mqtt={"qos": 1})
    tx["syslog"] = [{"name": "ot", "listen": [f"udp://127.0.0.1:{port}"], "queue_limit": 1000,
                     "udp_receive_buffer": 65536}]
    rx = diode.rx_doc()
    rx["syslog"] = [{"name": "ot", "collectors": [syslog_collector.endpoint("tcp")]}]
    rx_agent = diode.start("rx", rx)
    tx_agent = diode.start("tx", tx)
    diode.wait_up(rx_agent)
    it = collector(it_broker)
    diode.wait_ready(it)

    sent: list[int] = []
    flooder = threading.Thread(target=lambda: sent.append(flood(port, 20_000, 3.0)))
    flooder.start()
    time.sleep(0.5)  # the syslog queue is full from here on
    published = publish_all(ot_broker.host, ot_broker.port,
                            [(f"plant/line{i % 10}", b"%06d" % i, 1, False) for i in range(1000)])
    flooder.join()
    got = it.wait_count(published, "plant/", timeout=25)
    assert sorted(m.payload for m in got) == [b"%06d" % i for i in range(1000)]

    st = diode.wait_status(tx_agent, lambda st: st["queues"]["syslog:ot"]["queued"] == 0, 20,
                           "TX's syslog queue drained")
    c = {k.split(".", 1)[1]: v for k, v in st["counters"].items() if k.startswith("syslog:ot.")}
    assert c["received"] + c["udp_kernel_dropped"] == sent[0], c  # every datagram counted
    assert c["queue_dropped"] > 0, c  # the flood was far above the link
    taken = c["received"] - c["queue_dropped"]
    syslog_collector.wait_lines(taken, 15)
    rx_st = diode.wait_status(rx_agent, lambda st: st["syslog"]["ot"]["forwarded"] == taken, 10,
                              "RX forwarded what TX took")
    assert rx_st["counters"]["lost"] == 0
    assert rx_st["tx"]["counters"]["syslog:ot.queue_dropped"] == c["queue_dropped"]


async def _watch(endpoint: str, node_id: str, seconds: float) -> list[tuple[float, Any]]:
    """(monotonic time, value) of one mirrored variable, read every 0.1 s."""
    out = []
    async with Client(endpoint, timeout=5) as c:
        node = c.get_node(node_id)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            out.append((time.monotonic(), await node.read_value()))
            await asyncio.sleep(0.1)
    return out


def test_a_syslog_flood_does_not_starve_opcua(diode: Diode, plant: PlantProcess,  # noqa: F811
                                              make_rsyslog: Callable[..., Rsyslog]) -> None:
    """The plant changes Special.Int32 20 times a second (a counter); during a flood far
    above the link the mirror's value keeps moving, never still for more than a second."""
    syslog_collector = make_rsyslog("collector")
    port, mirror_port = free_udp_port(), free_port()
    tx, rx = _docs(diode, plant, mirror_port)
    tx["link"]["bitrate"] = 2_000_000
    tx["syslog"] = [{"name": "ot", "listen": [f"udp://127.0.0.1:{port}"], "queue_limit": 1000,
                     "udp_receive_buffer": 65536}]
    rx["syslog"] = [{"name": "ot", "collectors": [syslog_collector.endpoint("tcp")]}]
    rx_agent = diode.start("rx", rx)
    tx_agent = diode.start("tx", tx)
    diode.wait_up(rx_agent)
    endpoint, node = f"opc.tcp://127.0.0.1:{mirror_port}/diode/", "ns=2;s=Special.Int32"
    _wait_status(endpoint, node, "Good", 30)

    sent: list[int] = []
    flooder = threading.Thread(target=lambda: sent.append(flood(port, 20_000, 4.0)))
    flooder.start()
    time.sleep(0.5)  # the syslog queue is full from here on
    seen = asyncio.run(_watch(endpoint, node, 3.0))
    flooder.join()
    changes = [t for (t, v), (_, prev) in zip(seen[1:], seen, strict=False) if v != prev]
    assert len(changes) >= 10, seen  # about 30 reads, nearly each a new value
    gaps = [b - a for a, b in zip([seen[0][0], *changes], [*changes, seen[-1][0]],
                                  strict=True)]
    assert max(gaps) < 1.0, gaps
    st = diode.wait_status(tx_agent, lambda st: True, 5, "status")
    assert st["counters"]["syslog:ot.queue_dropped"] > 0  # the flood was far above the link
    assert diode.wait_status(rx_agent, lambda st: True, 5, "status")["counters"]["lost"] == 0
