"""The fast publish paths against a real Mosquitto: what paho would have sent, and
every QoS 1 message acknowledged once."""

from __future__ import annotations

import asyncio
import subprocess
import time

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.mqtt.config import BrokerConfig
from agent.mqtt.connection import MqttConnection
from diode_tools.sim.mosquitto import Broker


async def _publish(broker: Broker, protocol: str, n: int) -> list[tuple[int, int]]:
    conn = MqttConnection(BrokerConfig(broker.host, broker.port, protocol, f"fast-{protocol}"),
                          "test broker")
    conn.start()
    for _ in range(100):
        if conn.connected:
            break
        await asyncio.sleep(0.05)
    acks: list[tuple[int, int]] = []
    props = None
    if protocol == "5":
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("k", "v")]
    sizes = [0, 1, 127, 128, 16383, 16384, 70000]
    for i in range(n):
        payload = b"x" * sizes[i % len(sizes)]
        if i % 2:
            assert conn.client.publish_qos1(f"f/{i % 5}", payload, False, props,
                                            lambda reason, i=i: acks.append((i, reason)))
        else:
            assert conn.client.publish_qos0(f"f/{i % 5}", payload, False, props)
    for _ in range(100):
        if len(acks) == n // 2:
            break
        await asyncio.sleep(0.05)
    await conn.stop()
    return acks


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_fast_publish_qos0_and_qos1(protocol: str) -> None:
    n = 200
    with Broker() as b:
        sub = subprocess.Popen(["mosquitto_sub", "-p", str(b.port), "-t", "f/#", "-q", "1",
                                "-F", "%q %l", "-C", str(n), "-W", "10"],
                               stdout=subprocess.PIPE, text=True)
        time.sleep(0.3)
        acks = asyncio.run(_publish(b, protocol, n))
        out = sub.communicate(timeout=15)[0].split("\n")
    assert sorted(i for i, _ in acks) == list(range(1, n, 2))  # each QoS 1 acked once
    assert all(reason < 0x80 for _, reason in acks)
    lines = [line.split() for line in out if line]
    assert len(lines) == n
    assert [q for q, _ in lines] == ["0" if i % 2 == 0 else "1" for i in range(n)]
    sizes = [0, 1, 127, 128, 16383, 16384, 70000]
    assert [int(size) for _, size in lines] == [sizes[i % len(sizes)] for i in range(n)]
