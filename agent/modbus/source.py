"""TX side: one Modbus channel (its devices, polled) turned into link records.

```
DevicePoller per device (own task) ─► report(index, value, status) ─► state[index]
                                        changed? ─► pending (one entry per value) ─┐
take() ─► model chunks first (once), then per pending value: ◄─────────────────────┘
            ├► OpcuaValues batch (opcua_mirror)
            └► MqttMessage, retained (mqtt_channel)
carousels: "model" (the address space), "values" (OpcuaValues keyframes), "retained" (every topic)
```

The records are those of the OPC UA and MQTT channels (agent/modbus/__init__.py
says why): RX's `[[opcua]]` mirror named `opcua_mirror` and `[[mqtt]]` channel
named `mqtt_channel` take them as they take their own.

Values are state: a value that changes several times before the link takes it
leaves once, as its latest (the pending set holds indexes, not changes), so
the queue never holds more than one entry per value and nothing is dropped.
A value's timestamps are when it (or its status) last changed, so a carousel
re-send is byte for byte what it repeats and RX's MQTT sink skips it.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from agent.adapter import Carousel, SourceState, TxContext
from agent.link import records
from agent.modbus import outputs
from agent.modbus.config import ModbusChannel, ModbusDevice
from agent.modbus.plan import plan
from agent.modbus.poller import Bus, DevicePoller, Result
from agent.modbus.poller import stop as stop_pollers
from agent.mqtt.codec import encode_mqtt
from agent.opcua.codec import OpcuaValue, OpcuaValues


def _entry_size(e: OpcuaValue) -> int:
    return len(e[0]) + len(e[1]) + 24


class ModbusSource:
    def __init__(self, cfg: ModbusChannel, ctx: TxContext,
                 bus: Callable[[ModbusDevice, Counter[int]], Bus] | None = None) -> None:
        self.cfg = cfg
        self.key = f"modbus:{cfg.name}"
        self._wake = ctx.wake
        pairs = cfg.values
        self._values = [v for _, v in pairs]
        self._nids = [outputs.node_id(d.name, v.name) for d, v in pairs]
        self._topics = [outputs.topic(cfg, d, v) for d, v in pairs]
        self._state: list[tuple[Any, int, float] | None] = [None] * len(pairs)
        self._pending: dict[int, None] = {}
        self._live: deque[bytes] = deque()
        self._model: list[bytes] = []
        if cfg.opcua_mirror:
            snap = outputs.snapshot(cfg)
            self._model = [records.encode(c) for c in
                           snap.chunks(cfg.opcua_mirror, cfg.model_chunk_size)]
            self._live.extend(self._model)  # the address space goes out first
        if bus is None:
            from agent.modbus.bus import ReadOnlyBus
            bus = ReadOnlyBus
        make_bus = bus
        self.pollers: list[DevicePoller] = []
        # PDUs put on the wire, by function code, per device (the bus counts them)
        self.sent: dict[str, Counter[int]] = {d.name: Counter() for d in cfg.devices}
        start = 0
        for d in cfg.devices:
            indexed = list(enumerate(d.values, start))
            start += len(d.values)
            self.pollers.append(DevicePoller(d, plan(d, indexed), self._values,
                                             self._bus_for(make_bus, d), self._report))
        self._tasks: list[asyncio.Task[None]] = []
        self._counters: dict[str, int] = dict.fromkeys((
            "changes", "value_records", "mqtt_records", "model_records", "keyframe_records",
            "retained_records", "carousel_records"), 0)
        carousels = []
        if cfg.opcua_mirror:
            carousels += [
                Carousel("model", cfg.carousel_period, cfg.carousel_share,
                         lambda: self._counted(iter(self._model), "model_records")),
                Carousel("values", cfg.carousel_period, cfg.carousel_share,
                         lambda: self._counted(self.value_keyframe(), "keyframe_records"))]
        if cfg.mqtt_channel:
            carousels.append(Carousel("retained", cfg.carousel_period, cfg.carousel_share,
                                      lambda: self._counted(self.retained(), "retained_records")))
        self.carousels = tuple(carousels)

    def _bus_for(self, make: Callable[[ModbusDevice, Counter[int]], Bus],
                 d: ModbusDevice) -> Callable[[], Bus]:
        sent = self.sent[d.name]
        return lambda: make(d, sent)

    # -- the source contract (agent/adapter.py) ---------------------------------------

    @property
    def state(self) -> SourceState:
        states = {p.state for p in self.pollers}
        if not self._tasks:
            return SourceState.STOPPED
        if states == {"up"}:
            return SourceState.CONNECTED
        if "down" in states:
            return SourceState.DISCONNECTED
        return SourceState.CONNECTING

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(p.run(), name=f"modbus-{self.cfg.name}-{p.device.name}")
                       for p in self.pollers]

    async def stop(self) -> None:
        await stop_pollers(self.pollers, self._tasks)
        self._tasks = []

    def take(self, wall: float, limit: int) -> list[tuple[bytes | None, object]]:
        out: list[tuple[bytes | None, object]] = []
        live = self._live
        while live and len(out) < limit:
            out.append((live.popleft(), None))
            self._counters["model_records"] += 1
        cfg, pending, state = self.cfg, self._pending, self._state
        batch: list[OpcuaValue] = []
        size = 0
        while pending and len(out) < limit:
            i = next(iter(pending))
            del pending[i]
            s = state[i]
            assert s is not None
            if cfg.opcua_mirror:
                e = outputs.opcua_entry(self._nids[i], self._values[i], *s)
                batch.append(e)
                size += _entry_size(e)
                if size >= cfg.batch_bytes:
                    out.append((self._values_record(batch, False), None))
                    batch, size = [], 0
            if cfg.mqtt_channel:
                out.append((self._mqtt(i, s, False), None))
                self._counters["mqtt_records"] += 1
        if batch:
            out.append((self._values_record(batch, False), None))
        return out

    def framed(self, tags: list[object]) -> None:
        pass

    def rewind(self) -> None:
        pass  # values are state: the carousel re-sends them

    def waiting(self) -> int:
        return len(self._live) + len(self._pending)

    def dropped(self) -> int:
        return 0  # one pending entry per value: nothing to overflow

    def stats(self) -> dict[str, Any]:
        return {"queued": self.waiting(),
                "devices": {p.device.name: {**p.stats(), "sent": {
                    f"fc{fc}": n for fc, n in sorted(self.sent[p.device.name].items())}}
                    for p in self.pollers}}

    def tick(self) -> None:
        pass

    def close(self) -> None:
        pass

    @property
    def counters(self) -> Mapping[str, int]:
        """The channel's own counters, its devices' summed, and the PDUs sent by
        function code (`sent_fc1` .. `sent_fc4`: reads are all there is)."""
        out = dict(self._counters)
        for p in self.pollers:
            for k, v in p.counters.items():
                out[k] = out.get(k, 0) + v
        for fc in (1, 2, 3, 4):
            out[f"sent_fc{fc}"] = sum(c[fc] for c in self.sent.values())
        return out

    # -- values --------------------------------------------------------------------

    def _report(self, results: list[Result], wall: float) -> None:
        state, pending = self._state, self._pending
        was_empty = not pending
        n = 0
        for i, value, status in results:
            cur = state[i]
            if cur is not None and cur[1] == status and cur[0] == value:
                continue
            state[i] = (value, status, wall)
            pending[i] = None
            n += 1
        self._counters["changes"] += n
        if n and was_empty:
            self._wake()

    def _values_record(self, batch: list[OpcuaValue], keyframe: bool) -> bytes:
        self._counters["value_records"] += not keyframe
        return records.encode(OpcuaValues(self.cfg.opcua_mirror, keyframe, tuple(batch)))

    def _mqtt(self, i: int, s: tuple[Any, int, float], carousel: bool) -> bytes:
        payload = outputs.mqtt_payload(self._values[i], *s)
        return encode_mqtt(self.cfg.mqtt_channel, self._topics[i], payload, self.cfg.qos, True,
                           None, carousel)

    def value_keyframe(self) -> Iterator[bytes]:
        """Every value read so far, as OpcuaValues keyframes; each batch read when taken."""
        n, budget = len(self._state), self.cfg.batch_bytes
        i = 0
        while i < n:
            batch: list[OpcuaValue] = []
            size = 0
            while i < n and size < budget:
                s = self._state[i]
                if s is not None:
                    e = outputs.opcua_entry(self._nids[i], self._values[i], *s)
                    batch.append(e)
                    size += _entry_size(e)
                i += 1
            if batch:
                yield self._values_record(batch, True)

    def retained(self) -> Iterator[bytes]:
        """Every value read so far, as its retained MQTT message."""
        for i, s in enumerate(self._state):
            if s is not None:
                yield self._mqtt(i, s, True)

    def _counted(self, items: Iterator[bytes], counter: str) -> Iterator[bytes]:
        for data in items:
            self._counters["carousel_records"] += 1
            self._counters[counter] += 1
            yield data
