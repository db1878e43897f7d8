"""A simulated Modbus PLC (pymodbus's own server) for tests, the demo and benches.

```
test / demo ── set(unit, table, address, registers) ──► pymodbus server (TCP port, or a serial port: RTU)
                                                          │ every request received ─► requests[function code]
                                    diode tx ◄── answers ─┘
```

Each unit has 4,000 coils, discrete inputs, holding and input registers from
address 0, all 0 until set. `requests` counts every request the server
receives, by function code, whoever sends it: the honest count of what TX
asked (writes are function codes 5, 6, 15, 16, 22 and 23). The server runs in
a thread of its own with its own event loop, so a synchronous test can drive
it; `stop()` is the device being unplugged (its server stops, its connections
close), `start()` plugs it back in. `mute()` is a device that hangs: it keeps
its connections and counts what it gets, but answers nothing until `unmute()`.
`times()` is when each request arrived (monotonic), for pacing and backoff.

`changing=True` (the demo) makes holding register 1000 of every unit count the
seconds, input registers 1000..1009 follow slow sines and coil 1000 blink, so
the mirror shows values moving (`demo_values` maps them).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

SIZE = 4000
CHANGING = 1000  # first address of the registers `changing=True` moves
FUNCTION = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
WRITE_FUNCTIONS = (5, 6, 15, 16, 22, 23)


def _device(unit: int) -> SimDevice:
    bits = [SimData(0, count=SIZE, values=False, datatype=DataType.BITS)]
    regs = [SimData(0, count=SIZE, values=0, datatype=DataType.REGISTERS)]
    return SimDevice(id=unit, simdata=(list(bits), [SimData(0, count=SIZE, values=False,
                                                            datatype=DataType.BITS)],
                                       list(regs), [SimData(0, count=SIZE, values=0,
                                                            datatype=DataType.REGISTERS)]))


class SimulatedPlc:
    """One Modbus device: `port` (TCP on 127.0.0.1) or `serial_port` (RTU), with `units`."""

    def __init__(self, *, port: int | None = None, serial_port: str | None = None,
                 baudrate: int = 19200, parity: str = "E", units: Iterable[int] = (1,),
                 changing: bool = False) -> None:
        assert (port is None) != (serial_port is None)
        self.port, self.serial_port, self.baudrate, self.parity = port, serial_port, baudrate, parity
        self.units = tuple(units)
        self.changing = changing
        self.requests: Counter[int] = Counter()
        self._arrivals: list[float] = []
        self.muted = False
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._ticker: asyncio.Task[None] | None = None
        self._store: dict[tuple[int, int, int], int] = {}  # kept across stop/start

    @property
    def where(self) -> str:
        return self.serial_port or f"127.0.0.1:{self.port}"

    # -- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> SimulatedPlc:
        ready = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # reported to start()
                failed.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"plc-{self.where}", daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or failed:
            raise RuntimeError(f"simulated PLC at {self.where} did not start: {failed}")
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> SimulatedPlc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _serve(self) -> None:
        devices = [_device(u) for u in self.units]
        if self.serial_port is not None:
            self._server = ModbusSerialServer(devices, port=self.serial_port,
                                              baudrate=self.baudrate, parity=self.parity,
                                              trace_pdu=self._trace)
        else:
            self._server = ModbusTcpServer(devices, address=("127.0.0.1", self.port or 0),
                                           trace_pdu=self._trace)
        await self._server.serve_forever(background=True)
        for (unit, fc, address), value in self._store.items():
            await self._server.async_setValues(unit, fc, address, [value])
        if self.changing:
            self._ticker = asyncio.create_task(self._tick())

    async def _shutdown(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        if self._server is not None:
            await self._server.shutdown()  # closes the listener and every open connection
            self._server = None

    def _trace(self, sending: bool, pdu: Any) -> Any:
        if not sending:
            with self._lock:
                self.requests[pdu.function_code] += 1
                self._arrivals.append(time.monotonic())
            if self.muted:
                return None  # pymodbus handles (and answers) no request it is not given
        return pdu

    def mute(self) -> None:
        self.muted = True

    def unmute(self) -> None:
        self.muted = False

    # -- data --------------------------------------------------------------------------

    def counts(self) -> dict[int, int]:
        with self._lock:
            return dict(self.requests)

    def times(self) -> list[float]:
        """When each request arrived (time.monotonic()), in order."""
        with self._lock:
            return list(self._arrivals)

    def writes(self) -> int:
        with self._lock:
            return sum(self.requests[fc] for fc in WRITE_FUNCTIONS)

    def set(self, unit: int, table: str, address: int, values: Sequence[int] | Sequence[bool]) -> None:
        """Registers (or bits) of `unit` from `address` on; kept across stop and start."""
        fc = FUNCTION[table]
        for i, v in enumerate(values):
            self._store[(unit, fc, address + i)] = int(v)
        loop = self._loop
        if loop is not None:
            asyncio.run_coroutine_threadsafe(self._set(unit, fc, address, list(values)),
                                             loop).result(10)

    async def _set(self, unit: int, fc: int, address: int, values: list[Any]) -> None:
        # set_values of the datastore take the write function's block: 1 -> coils ("c"),
        # 2 -> discrete ("d"), 3 -> holding ("h"), 4 -> input ("i")
        if fc in (1, 2):
            values = [bool(v) for v in values]
        await self._server.async_setValues(unit, fc, address, values)

    async def _tick(self) -> None:
        start = time.monotonic()
        while True:
            t = time.monotonic() - start
            for unit in self.units:
                await self._set(unit, 3, CHANGING, [int(t) & 0xFFFF])
                await self._set(unit, 4, CHANGING, [int(500 + 400 * math.sin(t / 10 + i))
                                                    for i in range(10)])
                await self._set(unit, 1, CHANGING, [int(t) % 2])
            await asyncio.sleep(1.0)


# -- a register map of every type, for tests, the demo and benches --------------------


def sample_map(device: int, registers: int = 334) -> list[tuple[dict[str, Any], Any]]:
    """A register map of `registers` registers (at least 40) and 20 coils, with every type
    and word/byte order: ([[modbus.devices.values]] table, the value it shows) pairs.

    Holding 0.. int16 scaled by 0.1 (°C); holding 200.. uint32, every other one word
    little; input 0.. float32 in the four layouts; input 200.. float64 (4); holding
    300.. one string of 8 registers; coils 0..19. The int16 run takes what is left.
    """
    out: list[tuple[dict[str, Any], Any]] = []
    n16 = registers - 60 - 100 - 16 - 8
    assert n16 > 0, "registers must be at least 185"
    for i in range(n16):
        raw = (device * 1000 + i * 7) % 2000 - 1000
        out.append(({"name": f"temp{i:03d}", "address": i, "type": "int16", "scale": 0.1,
                     "unit": "°C"}, round(raw * 0.1, 1)))
    for i in range(30):
        v = (device + 1) * 65537 * (i + 1)
        out.append(({"name": f"count{i:02d}", "address": 200 + 2 * i, "type": "uint32",
                     "word_order": "little" if i % 2 else "big"}, v))
    layouts = [("big", "big"), ("little", "big"), ("big", "little"), ("little", "little")]
    for i in range(50):
        word, byte = layouts[i % 4]
        out.append(({"name": f"flow{i:02d}", "table": "input", "address": 2 * i,
                     "type": "float32", "word_order": word, "byte_order": byte, "unit": "m³/h"},
                    device * 100 + i + 0.25))
    for i in range(4):
        out.append(({"name": f"energy{i}", "table": "input", "address": 200 + 4 * i,
                     "type": "float64", "unit": "kWh"}, 1e6 * (device + 1) + i / 3))
    out.append(({"name": "label", "address": 300, "type": "string", "count": 8},
                f"device-{device}"))
    for i in range(20):
        out.append(({"name": f"run{i:02d}", "table": "coil", "address": i, "type": "bits"},
                    (i + device) % 3 == 0))
    return out


def demo_values() -> list[dict[str, Any]]:
    """The registers `changing=True` moves, as [[modbus.devices.values]] tables."""
    return [{"name": "uptime", "address": CHANGING, "unit": "s"},
            *({"name": f"level{i}", "table": "input", "address": CHANGING + i, "type": "int16",
               "scale": 0.1, "unit": "%"} for i in range(10)),
            {"name": "pulse", "table": "coil", "address": CHANGING, "type": "bits"}]


def load_map(plc: SimulatedPlc, values: list[tuple[dict[str, Any], Any]], unit: int = 1) -> None:
    """Put each value's registers into the PLC (before scaling)."""
    from agent.modbus.config import ModbusValue
    from agent.modbus.decode import encode_registers
    by_table: dict[str, dict[int, int]] = {}
    for table, shown in values:
        v = ModbusValue(**table)
        raw = round((shown - v.offset) / v.scale) if v.scaled else shown
        regs = by_table.setdefault(v.table, {})
        for k, r in enumerate(encode_registers(v, raw)):
            regs[v.address + k] = r
    for name, regs in by_table.items():
        start = min(regs)
        plc.set(unit, name, start, [regs.get(a, 0) for a in range(start, max(regs) + 1)])


def _toml(v: Any) -> str:
    import json
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return json.dumps(v, ensure_ascii=False)


def channel_toml(channel: dict[str, Any], devices: list[tuple[dict[str, Any],
                                                               list[dict[str, Any]]]]) -> str:
    """A `[[modbus]]` table with its devices and their values, as TOML text."""
    lines = ["[[modbus]]", *(f"{k} = {_toml(v)}" for k, v in channel.items())]
    for dev, values in devices:
        lines += ["", "[[modbus.devices]]", *(f"{k} = {_toml(v)}" for k, v in dev.items())]
        for table in values:
            lines += ["[[modbus.devices.values]]",
                      *(f"{k} = {_toml(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"
