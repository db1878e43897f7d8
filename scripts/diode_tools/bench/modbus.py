"""`diode bench modbus`: requests per poll cycle and poll cycle time of TX's Modbus
polling, against one request per value measured on the same PLCs in the same run.

```
3 simulated PLCs (pymodbus servers, TCP on loopback, own threads)
   ▲ reads
DevicePoller per device (TX's own, with its pymodbus bus) ─► decoded values (counted, dropped)
```

The map is the 1,000-register one the integration test uses (3 devices of
332-334 registers and 20 coils each, every type and order: 765 values).

- `requests_per_cycle`: TX's merged plan, summed over the devices, next to
  `baseline_requests_per_cycle` (one request per value) and, for scale,
  `contiguous`: what the plan makes of N contiguous registers on one device.
- `cycle_ms` / `baseline_cycle_ms`: median time of one device's poll cycle (all
  its requests, one after another, each waiting for its answer) with the
  request budget lifted, so it shows the round trips alone; `ratio` is baseline
  over ours. `budget_cycle_ms`: the same with the default budget (20 requests
  per second: the plan's 7 requests then take 6 gaps of 50 ms).
- `writes`: write requests the PLCs received (function codes 5, 6, 15, 16, 22,
  23): 0.

Loopback TCP and a PLC in Python make round trips short and the PLC slow; a
real device over Ethernet or RS-485 has longer round trips, which makes the
merged plan's advantage larger, not smaller.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from agent.modbus.bus import ReadOnlyBus
from agent.modbus.config import ModbusDevice, ModbusValue
from agent.modbus.plan import Read, plan, requests_per_cycle
from agent.modbus.poller import DevicePoller, stop
from diode_tools.sim.mosquitto import free_port
from diode_tools.sim.plant_modbus import SimulatedPlc, load_map, sample_map

PERIOD = 0.05  # shorter than a cycle: the poller starts the next one at once


def _bus(dev: ModbusDevice) -> Callable[[], ReadOnlyBus]:
    sent: Counter[int] = Counter()
    return lambda: ReadOnlyBus(dev, sent)


def _devices(plcs: list[SimulatedPlc], rps: float) -> list[tuple[ModbusDevice, list[ModbusValue]]]:
    out = []
    for i, plc in enumerate(plcs):
        values = [ModbusValue(**t, poll_period=PERIOD)
                  for t, _ in sample_map(i, 334 if i < 2 else 332)]
        out.append((ModbusDevice(name=f"plc{i}", host="127.0.0.1", port=plc.port or 0,
                                 requests_per_second=rps, poll_period=PERIOD, values=tuple(values)),
                    values))
    return out


def _per_value(values: list[ModbusValue], start: int) -> dict[float, list[Read]]:
    return {PERIOD: [Read(v.function, v.unit_id, v.address, v.size, ((start + k, 0),))
                   for k, v in enumerate(values)]}


async def _measure(devices: list[tuple[ModbusDevice, list[ModbusValue]]], baseline: bool,
                   cycles: int) -> dict[str, Any]:
    pollers = []
    start = 0
    all_values = [v for _, values in devices for v in values]
    for dev, values in devices:
        reads = _per_value(values, start) if baseline else plan(dev, list(enumerate(values,
                                                                                    start)))
        start += len(values)
        pollers.append(DevicePoller(dev, reads, all_values, _bus(dev),
                                    lambda results, wall: None))
    tasks = [asyncio.create_task(p.run()) for p in pollers]
    samples: list[float] = []
    seen = [0] * len(pollers)
    deadline = time.monotonic() + 60
    while min(p.counters["cycles"] for p in pollers) < cycles and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        for k, p in enumerate(pollers):
            if p.counters["cycles"] > seen[k] and p.counters["cycles"] > 1:  # skip the first
                samples.append(p.cycle_ms[PERIOD])
            seen[k] = p.counters["cycles"]
    await stop(pollers, tasks)
    return {"requests_per_cycle": sum(requests_per_cycle(p.reads) for p in pollers),
            "cycle_ms": round(statistics.median(samples), 1) if samples else None,
            "answers": sum(p.counters["answers"] for p in pollers)}


def run_modbus_bench(cycles: int = 20) -> dict[str, Any]:
    plcs = [SimulatedPlc(port=free_port()) for _ in range(3)]
    try:
        for i, plc in enumerate(plcs):
            plc.start()
            load_map(plc, sample_map(i, 334 if i < 2 else 332))
        fast = _devices(plcs, 10_000.0)
        ours = asyncio.run(_measure(fast, False, cycles))
        base = asyncio.run(_measure(fast, True, cycles))
        budget = asyncio.run(_measure(_devices(plcs, 20.0), False, max(3, cycles // 5)))
        registers = sum(v.size for _, vs in fast for v in vs if v.function in (3, 4))
        contiguous = {}
        for n in (125, 250, 500, 1000, 2000):
            dev = ModbusDevice(name="d", host="h", values=tuple(
                ModbusValue(name=f"r{a}", address=a) for a in range(n)))
            contiguous[n] = requests_per_cycle(plan(dev, list(enumerate(dev.values))))
        return {
            "devices": len(plcs), "registers": registers,
            "values": sum(len(vs) for _, vs in fast),
            "requests_per_cycle": ours["requests_per_cycle"],
            "baseline_requests_per_cycle": base["requests_per_cycle"],
            "cycle_ms": ours["cycle_ms"], "baseline_cycle_ms": base["cycle_ms"],
            "ratio": round(base["cycle_ms"] / ours["cycle_ms"], 1)
            if ours["cycle_ms"] and base["cycle_ms"] else None,
            "budget_cycle_ms": budget["cycle_ms"],
            "contiguous": contiguous,
            "plc_requests": sum(sum(p.counts().values()) for p in plcs),
            "writes": sum(p.writes() for p in plcs),
        }
    finally:
        for plc in plcs:
            plc.stop()
