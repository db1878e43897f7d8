"""Configurations that used to fail silently: overlapping topic filters that multiplied
traffic, and a broker that closes the socket on an MQTT version it does not speak.

```
publisher ─► OT Mosquitto ─► diode tx ══ UDP ══► diode rx ─► "RabbitMQ" (closes on a v5 CONNECT,
                                                             proxies 3.1.1) ─► IT Mosquitto ─► collector
```
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import paho.mqtt.client as paho
import pytest

from diode_tools.sim.mosquitto import Broker, free_port
from tests.integration.conftest import Collector, Diode, publish_all

pytestmark = pytest.mark.timeout(60)

MakeCollector = Callable[..., Collector]


def test_overlapping_filters_are_refused_and_disjoint_ones_carry_each_message_once(
        diode: Diode, ot_broker: Broker, it_broker: Broker, collector: MakeCollector) -> None:
    bad = diode.start("tx", diode.tx_doc(mqtt={"topics": ["plant/#", "plant/line1/#"]}),
                      "tx-overlap")
    assert bad.wait_exit(10) == 2
    log = bad.log()
    assert "'plant/#' covers 'plant/line1/#'" in log and "Fix: drop 'plant/line1/#'" in log, log

    rx = diode.start_rx()
    diode.start_tx(mqtt={"topics": ["plant/#", "probe/#"]})
    sub = collector(it_broker, ["#"])
    diode.wait_up(rx)
    diode.wait_ready(sub)
    msgs = [(f"plant/line{i % 3}/m", b"%d" % i, 1, False) for i in range(100)]
    publish_all(ot_broker.host, ot_broker.port, msgs)
    sub.wait_count(100, "plant/", timeout=10)
    time.sleep(1.0)  # anything doubled would show by now
    assert len(sub.data("plant/")) == 100


class ClosesOnV5:
    """A broker front like RabbitMQ 3.10's MQTT plugin: it reads the CONNECT and closes
    the socket when it asks for MQTT 5; a 3.1.1 connection is passed on to `upstream`."""

    def __init__(self, upstream: Broker) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.closed_v5 = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readexactly(2)
            length, mult, more = head[1] & 0x7F, 128, head[1] & 0x80
            raw = bytearray(head)
            while more:
                b = await reader.readexactly(1)
                raw += b
                length += (b[0] & 0x7F) * mult
                mult, more = mult * 128, b[0] & 0x80
            body = await reader.readexactly(length)
            level = body[2 + int.from_bytes(body[:2], "big")]
            if level == 5:
                self.closed_v5 += 1
                writer.close()
                return
            up_r, up_w = await asyncio.open_connection(self.upstream.host, self.upstream.port)
            up_w.write(bytes(raw) + body)
            await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer))
        except (asyncio.IncompleteReadError, ConnectionError, IndexError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        with contextlib.suppress(Exception):
            dst.close()

    def close(self) -> None:
        def stop() -> None:
            self._server.close()
            self._loop.stop()
        self._loop.call_soon_threadsafe(stop)
        self._thread.join(5)


@pytest.fixture
def rabbit(it_broker: Broker) -> Iterator[ClosesOnV5]:
    front = ClosesOnV5(it_broker)
    yield front
    front.close()


def test_broker_closing_the_socket_on_a_v5_connect_is_a_loud_error_naming_the_fix(
        diode: Diode, ot_broker: Broker, it_broker: Broker, rabbit: ClosesOnV5,
        collector: MakeCollector) -> None:
    doc = diode.rx_doc(mqtt={"port": rabbit.port, "reconnect_min": 0.2})
    t0 = time.monotonic()
    rx = diode.start("rx", doc, "rx-v5")
    assert rx.wait_exit(20) == 2
    took = time.monotonic() - t0
    log = rx.log()
    assert f"127.0.0.1:{rabbit.port}" in log, log
    assert "does not speak MQTT 5" in log and 'Fix: set protocol = "3.1.1"' in log, log
    assert rabbit.closed_v5 == 3 and took < 15, (rabbit.closed_v5, took)

    # What the error said to do: 3.1.1 through the same front, and messages flow.
    rx = diode.start("rx", diode.rx_doc(mqtt={"port": rabbit.port, "protocol": "3.1.1"}))
    diode.start_tx()
    sub = collector(it_broker, ["#"], protocol=paho.MQTTv311)
    diode.wait_up(rx)
    diode.wait_ready(sub)
    publish_all(ot_broker.host, ot_broker.port, [(f"r/{i}", b"%d" % i, 1, False)
                                                 for i in range(50)])
    assert len(sub.wait_count(50, "r/", timeout=10)) == 50
