"""A simulated plant publishing to the OT broker, and a counter on the IT broker.

300 topics: 100 retained machine states (`plant/areaA/machineM/state`) and 200
non-retained sensor readings. Every payload carries a global sequence number so
the IT side can count unique deliveries, whatever the carousel repeats.
"""

from __future__ import annotations

import json
import random
import threading
import time

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

STATES = [f"plant/area{a}/machine{m}/state" for a in range(1, 6) for m in range(1, 21)]
SENSORS = [f"plant/area{a}/machine{m}/sensor{k}" for a in range(1, 6) for m in range(1, 21)
           for k in (1, 2)]


class PlantPublisher:
    def __init__(self, host: str, port: int, rate: float, seed: int = 7) -> None:
        self.rate = rate
        self.published = 0
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="plant-sim",
                                  protocol=paho.MQTTv5)
        self.client.max_queued_messages_set(0)
        self.client.connect(host, port)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._run, name="plant", daemon=True)

    def start(self) -> None:
        # Every state once, retained, so IT can mirror it from the start.
        for topic in STATES:
            self._publish(topic, retain=True)
        self._thread.start()

    def _publish(self, topic: str, retain: bool) -> None:
        value = round(self._rng.uniform(0, 100), 2)
        body = {"seq": self.published, "t": time.time(),
                "state": self._rng.choice(["RUN", "IDLE", "FAULT"]) if retain else None,
                "value": None if retain else value}
        self.client.publish(topic, json.dumps(body).encode(), qos=1 if retain else 0,
                            retain=retain)
        self.published += 1

    def _run(self) -> None:
        start = time.monotonic()
        sent = 0
        while not self._stop.is_set():
            due = int((time.monotonic() - start) * self.rate)
            while sent < due:
                if self._rng.random() < 0.05:
                    self._publish(self._rng.choice(STATES), retain=True)
                else:
                    self._publish(self._rng.choice(SENSORS), retain=False)
                sent += 1
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.client.loop_stop()
        self.client.disconnect()


class DeliveryCounter:
    """Counts unique plant sequence numbers arriving at the IT broker."""

    def __init__(self, host: str, port: int, topic: str = "plant/#") -> None:
        self.seen: set[int] = set()
        self.messages = 0
        self.retained_topics: set[str] = set()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="it-counter",
                                  protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self._topic = topic
        self.client.on_connect = lambda c, *_: c.subscribe(
            topic, options=SubscribeOptions(qos=1, retainAsPublished=True))
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        self.messages += 1
        if msg.retain:
            self.retained_topics.add(msg.topic)
        try:
            self.seen.add(int(json.loads(msg.payload)["seq"]))
        except (ValueError, KeyError, TypeError):
            pass

    @property
    def delivered(self) -> int:
        return len(self.seen)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
