"""Reading an MQTT broker's retained store with a short-lived second subscription.

A 3.1.1 broker clears the retain flag on live deliveries: only the messages it
sends from its retained store right after a SUBSCRIBE carry it. TX's 3.1.1
channels call `read_retained` once a carousel period to learn which topics
are retained now, including those that became retained while TX was
subscribed (agent/mqtt/source.py).

```
connect (client id + "-retained", clean session) ─► SUBSCRIBE filters ─► SUBACK
   ─► retained messages (retain flag set) until quiet ─► DISCONNECT
```
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

import paho.mqtt.client as paho

from agent.mqtt.config import BrokerConfig
from agent.mqtt.connection import MqttConnection

log = logging.getLogger("diode.source.mqtt")

QUIET = 0.3      # seconds without a retained message after SUBACK: the store is read
LONGEST = 20.0   # give up on a read after this long


async def read_retained(broker: BrokerConfig, filters: tuple[str, ...], qos: int,
                        what: str) -> dict[str, tuple[bytes, int]] | None:
    """topic -> (payload, qos) of every retained message the filters match; None when
    the store could not be read completely (not connected, refused, too slow)."""
    cfg = dataclasses.replace(broker, client_id=f"{broker.client_id}-retained")
    found: dict[str, tuple[bytes, int]] = {}
    suback = asyncio.Event()
    last = [0.0]

    def on_message(topic: str, payload: bytes, q: int, retain: bool, props: Any,
                   mid: int) -> None:
        if retain:
            found[topic] = (bytes(payload), q)
            last[0] = time.monotonic()

    def subscribe(client: paho.Client) -> None:
        client.subscribe([(f, qos) for f in filters])

    conn = MqttConnection(cfg, what, on_connected=subscribe, on_message=on_message,
                          quiet=True)
    def on_suback(*_: Any) -> None:
        suback.set()
        last[0] = time.monotonic()

    conn.client.on_subscribe = on_suback
    conn.start()
    try:
        await asyncio.wait_for(suback.wait(), LONGEST / 2)
        deadline = time.monotonic() + LONGEST
        while time.monotonic() - last[0] < QUIET:
            if time.monotonic() > deadline or not conn.connected:
                return None
            await asyncio.sleep(QUIET / 3)
        return found
    except TimeoutError:
        log.debug("%s: no SUBACK in time; retained store not read", what)
        return None
    finally:
        await conn.stop()
