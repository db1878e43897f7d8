"""The only door to a Modbus device: the four read functions, and nothing else.

```
DevicePoller ─► ReadOnlyBus.read(function 1..4, unit, address, count) ─► READ_REQUESTS[function] PDU
                                                                         ─► pymodbus client.execute ─► device
```

TX may never change a plant. This module builds requests from READ_REQUESTS
alone (Read Coils, Read Discrete Inputs, Read Holding Registers, Read Input
Registers: function codes 1 to 4); the client is private to it and only its
generic `execute` is called, so no other request can be formed anywhere in
agent/modbus. As a second lock, every PDU the client puts on the wire
passes `_outgoing`, which counts it by function code and raises on any other
code before it is framed. tests/unit/modbus/test_source.py checks both, and
the integration tests count the simulated PLC's requests by function code.

pymodbus (imported here, so only when a channel is configured) runs with
retries from the config and no reconnect of its own: DevicePoller owns the
backoff. Its logger is quietened to CRITICAL: it logs an error for every
unanswered request, and the poller already logs each device's change of
state once, with the fix.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.bit_message import ReadCoilsRequest, ReadDiscreteInputsRequest
from pymodbus.pdu.register_message import ReadHoldingRegistersRequest, ReadInputRegistersRequest

from agent.modbus.config import ModbusDevice
from agent.modbus.poller import Disconnected, NoAnswer, Refused

READ_REQUESTS: dict[int, type[ModbusPDU]] = {
    1: ReadCoilsRequest, 2: ReadDiscreteInputsRequest,
    3: ReadHoldingRegistersRequest, 4: ReadInputRegistersRequest,
}

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


class ReadOnlyBus:
    """One device connection (TCP or RTU) that can only read."""

    def __init__(self, device: ModbusDevice, sent: Counter[int] | None = None) -> None:
        self.device = device
        self.sent: Counter[int] = Counter() if sent is None else sent  # PDUs sent, by function
        if device.serial_port:
            self._client: AsyncModbusTcpClient | AsyncModbusSerialClient = AsyncModbusSerialClient(
                device.serial_port, framer=FramerType.RTU, baudrate=device.baudrate,
                parity=device.parity, stopbits=device.stopbits, bytesize=8,
                timeout=device.timeout, retries=device.retries, reconnect_delay=0,
                trace_pdu=self._outgoing)
        else:
            self._client = AsyncModbusTcpClient(
                device.host, port=device.port, timeout=device.timeout, retries=device.retries,
                reconnect_delay=0, trace_pdu=self._outgoing)

    def _outgoing(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if sending:
            code = pdu.function_code
            if code not in READ_REQUESTS:
                raise RuntimeError(f"refusing to send Modbus function {code}: TX only reads")
            self.sent[code] += 1
        return pdu

    async def connect(self) -> None:
        try:
            ok = await self._client.connect()
        except (OSError, ConnectionException) as exc:
            raise Disconnected(str(exc) or type(exc).__name__) from None
        if not ok:
            raise Disconnected("cannot connect")

    async def read(self, function: int, unit_id: int, address: int,
                   count: int) -> Sequence[int] | Sequence[bool]:
        request = READ_REQUESTS[function](address=address, count=count, dev_id=unit_id)
        try:
            response = await self._client.execute(False, request)
        except ConnectionException as exc:
            raise Disconnected(str(exc)) from None
        except ModbusIOException as exc:
            if not self._client.connected:
                raise Disconnected(str(exc)) from None
            raise NoAnswer(str(exc)) from None
        except OSError as exc:
            raise Disconnected(str(exc) or type(exc).__name__) from None
        if response.isError():
            raise Refused(response.exception_code)
        if function in (1, 2):
            return response.bits[:count]
        if len(response.registers) < count:
            raise NoAnswer(f"{len(response.registers)} of {count} registers in the answer")
        return response.registers

    def close(self) -> None:
        self._client.close()
