"""One device's polling loop: its own asyncio task, its own budget, its own backoff.

```
connect ─► every poll period: its planned reads, one at a time, at most requests_per_second
   ▲           │ answer ─────────► decode ─► report(index, value, Good)
   │           │ exception ──────► report(index, None, BadConfigurationError | BadDeviceFailure)
   │           │                   (illegal address on a merged read: split it, once, and go on)
   │           │ no answer ──────► that unit's values Bad; the unit waits out its backoff
   │           │                   (backoff_min doubling to backoff_max), then one read probes it;
   │           │                   its backoff outlives a reconnect (pymodbus closes a silent
   │           │                   device's connection after retries + 3 unanswered requests)
   └ backoff ◄─┘ connection lost ─► every value of the device Bad
```

A device that stops answering costs only its own task's time: the others run
in tasks of their own (one per device, so a dead TCP device never delays a
live one). On one serial line the units share a task, as they share the line;
a dead unit there costs one probe (timeout × (retries + 1)) per backoff
period.

The bus is an interface (`Bus`) so that tests drive the loop without a
device; agent/modbus/bus.py is the pymodbus one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent.modbus import outputs
from agent.modbus.config import ModbusDevice, ModbusValue
from agent.modbus.decode import decode
from agent.modbus.plan import Read, requests_per_cycle, split

log = logging.getLogger("diode.source.modbus")

async def stop(pollers: Sequence[DevicePoller], tasks: Sequence[asyncio.Task[None]]) -> None:
    """End the pollers' tasks. A flag as well as cancel(): Python 3.11's wait_for (inside
    pymodbus) swallows a cancel that arrives as the answer does, and the task would poll
    on; the flag ends it at the next request, and cancel() is repeated until it has."""
    for p in pollers:
        p.stopping = True
    pending = set(tasks)
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.2)
    for p in pollers:
        if p.bus is not None:
            p.bus.close()


# (value index, value or None, status code)
Result = tuple[int, Any, int]
ILLEGAL_FUNCTION, ILLEGAL_ADDRESS = 1, 2


class NoAnswer(Exception):
    """The device did not answer in time (after the retries)."""


class Disconnected(Exception):
    """No connection to the device (refused, closed, port missing)."""


class Refused(Exception):
    """The device answered with a Modbus exception."""

    def __init__(self, code: int) -> None:
        super().__init__(f"Modbus exception {code}")
        self.code = code


class Bus(Protocol):
    async def connect(self) -> None: ...

    async def read(self, function: int, unit_id: int, address: int,
                   count: int) -> Sequence[int] | Sequence[bool]: ...

    def close(self) -> None: ...


@dataclass
class _Unit:
    down_until: float = 0.0
    backoff: float = 0.0
    down: bool = False


class DevicePoller:
    """Polls one device; `report(results, wall)` gets every outcome of every read."""

    def __init__(self, device: ModbusDevice, reads: dict[float, list[Read]],
                 values: Sequence[ModbusValue], bus: Callable[[], Bus],
                 report: Callable[[list[Result], float], None], *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.device = device
        self.reads = {p: list(r) for p, r in sorted(reads.items())}
        self.values = values
        self._new_bus = bus
        self.bus: Bus | None = None
        self._report = report
        self._clock, self._wall, self._sleep = clock, wall, sleep
        self.state = "connecting"  # connecting | up | down
        self._units: dict[int, _Unit] = {}
        self._last_request = -1e9
        self._refusals_logged: set[tuple[int, int, int]] = set()
        self.counters: dict[str, int] = dict.fromkeys((
            "connects", "outages", "requests", "answers", "no_answers", "exceptions",
            "cycles", "overruns", "splits"), 0)
        self.cycle_ms: dict[float, float] = {}
        self.stopping = False

    # -- the loop ------------------------------------------------------------------

    async def run(self) -> None:
        dev = self.device
        delay = dev.backoff_min
        while not self.stopping:
            self.bus = self._new_bus()
            try:
                await self.bus.connect()
            except Disconnected as exc:
                self._lost(f"cannot connect: {exc}", delay)
                self.bus.close()
                await self._sleep(delay)
                delay = min(delay * 2, dev.backoff_max)
                continue
            self.counters["connects"] += 1
            answered = [False]
            try:
                await self._poll(answered)
            except Disconnected as exc:
                self._lost(f"connection lost: {exc}", delay)
            finally:
                self.bus.close()
            delay = dev.backoff_min if answered[0] else min(delay * 2, dev.backoff_max)
            await self._sleep(delay)

    async def _poll(self, answered: list[bool]) -> None:
        now = self._clock()
        due = dict.fromkeys(self.reads, now)
        while not self.stopping:
            period = min(due, key=lambda p: due[p])
            await self._sleep(max(0.0, due[period] - self._clock()))  # yields even when late
            started = self._clock()
            if await self._cycle(period):
                answered[0] = True
            self.counters["cycles"] += 1
            self.cycle_ms[period] = round((self._clock() - started) * 1000, 1)
            due[period] += period
            if due[period] < self._clock():
                self.counters["overruns"] += 1
                due[period] = self._clock()

    async def _cycle(self, period: float) -> bool:
        """One round of a period's reads; True when any was answered."""
        reads = self.reads[period]
        answered = False
        i = 0
        while i < len(reads) and not self.stopping:
            r = reads[i]
            unit = self._units.setdefault(r.unit_id, _Unit())
            if unit.down and self._clock() < unit.down_until:
                i += 1
                continue
            await self._pace()
            self.counters["requests"] += 1
            try:
                raw = await self._read(r)
            except Disconnected as exc:
                if unit.down:  # pymodbus closes the connection after retries + 3 unanswered
                    # requests: for a silent unit one more silence, its backoff growing on
                    self._unit_lost(r.unit_id, unit, str(exc))
                raise
            except NoAnswer as exc:
                self.counters["no_answers"] += 1
                self._unit_lost(r.unit_id, unit, str(exc))
                i += 1
                continue
            except Refused as exc:
                self.counters["exceptions"] += 1
                pieces = split(r, self.values) if exc.code == ILLEGAL_ADDRESS else [r]
                if len(pieces) > 1:
                    # the hole holds addresses the device lacks: read the runs alone
                    self.counters["splits"] += 1
                    log.info("%s: unit %d refuses %d registers at %d (illegal address); "
                             "reading its %d runs apart", self.device.label, r.unit_id,
                             r.count, r.address, len(pieces))
                    reads[i:i + 1] = pieces
                    continue
                self._refused(r, exc.code)
                i += 1
                continue
            self.counters["answers"] += 1
            answered = True
            if unit.down or self.state != "up":
                self._unit_back(r.unit_id, unit)
            self._report(self._decoded(r, raw), self._wall())
            i += 1
        return answered

    async def _read(self, r: Read) -> Sequence[int] | Sequence[bool]:
        assert self.bus is not None
        return await self.bus.read(r.function, r.unit_id, r.address, r.count)

    async def _pace(self) -> None:
        gap = 1.0 / self.device.requests_per_second
        now = self._clock()
        wait = self._last_request + gap - now
        if wait > 0:
            await self._sleep(wait)
        self._last_request = max(now, self._last_request + gap)

    # -- outcomes ------------------------------------------------------------------

    def _decoded(self, r: Read, raw: Sequence[int] | Sequence[bool]) -> list[Result]:
        out: list[Result] = []
        for index, offset in r.items:
            v = self.values[index]
            try:
                out.append((index, decode(v, raw[offset:offset + v.size]), outputs.GOOD))
            except ValueError:
                out.append((index, None, outputs.BAD_DEVICE_FAILURE))
        return out

    def _bad(self, reads: Sequence[Read], status: int) -> None:
        results = [(index, None, status) for r in reads for index, _ in r.items]
        if results:
            self._report(results, self._wall())

    def _all_reads(self, unit_id: int | None = None) -> list[Read]:
        return [r for reads in self.reads.values() for r in reads
                if unit_id is None or r.unit_id == unit_id]

    def _lost(self, why: str, retry_in: float) -> None:
        if self.state != "down":
            self.counters["outages"] += 1
            log.warning("%s: %s; its values turn Bad; retrying every %.1f s up to %.0f s. Check "
                        "the device, its address and the network or serial line to it",
                        self.device.label, why, retry_in, self.device.backoff_max)
        self.state = "down"
        # a silent unit keeps its backoff across the reconnect (pymodbus drops the
        # connection of a device that stops answering): the others are read at once
        self._bad(self._all_reads(), outputs.BAD_NO_COMMUNICATION)

    def _unit_lost(self, unit_id: int, unit: _Unit, why: str) -> None:
        dev = self.device
        unit.backoff = dev.backoff_min if not unit.down else min(unit.backoff * 2,
                                                                 dev.backoff_max)
        unit.down_until = self._clock() + unit.backoff
        if not unit.down:
            self.counters["outages"] += 1
            log.warning("%s: unit %d does not answer (%s, after %d retries of %.1f s); its "
                        "values turn Bad; probing every %.1f s up to %.0f s", dev.label, unit_id,
                        why, dev.retries, dev.timeout, unit.backoff, dev.backoff_max)
        unit.down = True
        self.state = "down"
        self._bad(self._all_reads(unit_id), outputs.BAD_NO_COMMUNICATION)

    def _unit_back(self, unit_id: int, unit: _Unit) -> None:
        if unit.down or self.state == "down":
            log.info("%s: unit %d answers again", self.device.label, unit_id)
        unit.down = False
        unit.backoff = 0.0
        if not any(u.down for u in self._units.values()):
            self.state = "up"

    def _refused(self, r: Read, code: int) -> None:
        status = outputs.BAD_CONFIGURATION_ERROR if code in (ILLEGAL_FUNCTION, ILLEGAL_ADDRESS) \
            else outputs.BAD_DEVICE_FAILURE
        key = (r.unit_id, r.function, r.address)
        if key not in self._refusals_logged:
            self._refusals_logged.add(key)
            names = ", ".join(self.values[i].name for i, _ in r.items)
            fix = ("check the register map (table, address, count, unit_id)"
                   if status == outputs.BAD_CONFIGURATION_ERROR else "check the device")
            log.warning("%s: unit %d answers exception %d to function %d at %d (count %d): "
                        "values %s turn Bad. Fix: %s", self.device.label, r.unit_id, code,
                        r.function, r.address, r.count, names, fix)
        self._bad([r], status)

    # -- figures -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        reads = self._all_reads()
        return {"state": self.state, "requests_per_cycle": requests_per_cycle(self.reads),
                "registers": sum(r.count for r in reads if r.function in (3, 4)),
                "bits": sum(r.count for r in reads if r.function in (1, 2)),
                "values": sum(len(r.items) for r in reads),
                "cycle_ms": {f"{p:g}": ms for p, ms in self.cycle_ms.items()},
                **self.counters}
