"""The Modbus source against a fake bus: values become the OPC UA and MQTT records RX
already carries, a silent unit turns only its own values Bad, a refused merged read is
split; and the code can form no request but the four reads."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.adapter import SourceState, TxContext
from agent.config_reader import Table
from agent.link import records
from agent.modbus import outputs
from agent.modbus.config import ModbusChannel, ModbusDevice, parse
from agent.modbus.poller import Disconnected, NoAnswer, Refused
from agent.modbus.source import ModbusSource
from agent.mqtt.codec import MqttMessage
from agent.opcua.codec import OpcuaModel, OpcuaValues
from agent.opcua.model import ModelAssembler

MODBUS = Path(__file__).resolve().parents[3] / "agent" / "modbus"


class FakeBus:
    """Registers of every unit at 0 + address; unit 9 never answers; holding 50..59
    do not exist (exception 2)."""

    def __init__(self, device: ModbusDevice, sent: Counter[int], regs: dict[int, int],
                 down: set[str]) -> None:
        self.device, self.sent, self.regs, self.down = device, sent, regs, down

    async def connect(self) -> None:
        if self.device.name in self.down:
            raise Disconnected("refused")

    async def read(self, function: int, unit_id: int, address: int,
                   count: int) -> Sequence[int]:
        self.sent[function] += 1
        await asyncio.sleep(0)
        if self.device.name in self.down:
            raise Disconnected("closed")
        if unit_id == 9:
            raise NoAnswer("timeout")
        if function == 3 and address < 60 and address + count > 50:
            raise Refused(2)
        return [self.regs.get(unit_id * 1000 + address + i, 0) for i in range(count)]

    def close(self) -> None:
        pass


def _channel(**kw: Any) -> ModbusChannel:
    data = {"name": "plc", "opcua_mirror": "plc", "mqtt_channel": "plant", "devices": [
        {"name": "a", "host": "h", "poll_period": 0.05, "backoff_min": 0.05,
         "requests_per_second": 1000, "values": [
             {"name": "t", "address": 0, "type": "int16", "scale": 0.1, "unit": "°C"},
             {"name": "n", "address": 1, "type": "uint32"},
             {"name": "gone", "address": 55},
             {"name": "near", "address": 45, "unit_id": 1},
             {"name": "far", "address": 62},
             {"name": "mute", "address": 0, "unit_id": 9}]},
        {"name": "b", "host": "h2", "poll_period": 0.05, "backoff_min": 0.05,
         "requests_per_second": 1000, "values": [{"name": "x", "address": 7}]}], **kw}
    cfg = parse(Table(Path("tx.toml"), "modbus.0", data), "tx", False)
    return cfg


def _run(src: ModbusSource, seconds: float) -> list[Any]:
    async def go() -> list[Any]:
        await src.start()
        await asyncio.sleep(seconds)
        out = [records.decode(d) for d, _ in src.take(time.time(), 10_000) if d is not None]
        await src.stop()
        return out
    return asyncio.run(go())


def _source(down: set[str] | None = None) -> tuple[ModbusSource, Counter[int]]:
    sent: Counter[int] = Counter()
    regs = {1000: 215, 1001: 1, 1002: 2, 1045: 45, 1062: 62, 1007: 7}

    def bus(d: ModbusDevice, s: Counter[int]) -> FakeBus:
        return FakeBus(d, sent, regs, down if down is not None else set())
    ctx = TxContext(wake=lambda: None, fail=lambda m: None, open_spool=lambda n: None)
    return ModbusSource(_channel(), ctx, bus=bus), sent


def _values(recs: list[Any]) -> dict[str, tuple[bytes, int]]:
    out = {}
    for r in recs:
        if isinstance(r, OpcuaValues):
            out.update({nid: (v, code) for nid, v, code, _, _ in r.values})
    return out


def test_values_leave_as_an_address_space_opcua_values_and_retained_json() -> None:
    src, sent = _source()
    recs = _run(src, 0.5)
    assert isinstance(recs[0], OpcuaModel) and recs[0].source == "plc"
    asm = ModelAssembler()
    done = asm.add(recs[0])
    assert done is not None
    _, snap = done
    assert snap.namespaces[1] == "urn:diode:modbus:plc"
    ids = {n.node_id for n in snap.nodes}
    assert {"ns=1;s=Modbus", "ns=1;s=a", "ns=1;s=a/t", "ns=1;s=a/t/EngineeringUnits",
            "ns=1;s=b/x"} <= ids
    values = _values(recs)
    assert values["ns=1;s=a/t"][1] == outputs.GOOD and values["ns=1;s=b/x"][1] == outputs.GOOD
    assert values["ns=1;s=a/mute"] == (b"\x00", outputs.BAD_NO_COMMUNICATION)
    assert values["ns=1;s=a/gone"][1] == outputs.BAD_CONFIGURATION_ERROR
    # the merged read 45..62 was refused and split: its other values still read
    assert values["ns=1;s=a/near"][1] == values["ns=1;s=a/far"][1] == outputs.GOOD
    mqtt = {r.topic: json.loads(r.payload) for r in recs if isinstance(r, MqttMessage)}
    assert all(isinstance(r, MqttMessage) and r.retain and r.channel == "plant"
               for r in recs if isinstance(r, MqttMessage))
    assert mqtt["modbus/plc/a/t"]["value"] == 21.5 and mqtt["modbus/plc/a/t"]["unit"] == "°C"
    assert mqtt["modbus/plc/a/n"]["value"] == 0x00010002
    assert mqtt["modbus/plc/a/mute"] == {**mqtt["modbus/plc/a/mute"], "value": None,
                                         "quality": "bad", "status": "BadNoCommunication"}
    c = src.counters
    assert c["splits"] == 1 and c["no_answers"] >= 1
    assert set(sent) <= {3} and sum(sent.values()) == c["requests"]
    assert src.stats()["devices"]["a"]["state"] == "down"  # unit 9 is silent


def test_a_device_that_is_gone_turns_only_its_own_values_bad() -> None:
    src, _ = _source(down={"b"})
    recs = _run(src, 0.4)
    values = _values(recs)
    assert values["ns=1;s=b/x"] == (b"\x00", outputs.BAD_NO_COMMUNICATION)
    assert values["ns=1;s=a/t"][1] == outputs.GOOD
    assert src.stats()["devices"]["b"]["state"] == "down"


def test_values_are_state_each_leaves_once_and_the_carousels_repeat_them() -> None:
    src, _ = _source()
    recs = _run(src, 0.5)
    mqtt_topics = [r.topic for r in recs if isinstance(r, MqttMessage)]
    assert len(mqtt_topics) == len(set(mqtt_topics)) == 7  # many polls, one message each
    names = {c.name for c in src.carousels}
    assert names == {"model", "values", "retained"}
    by_name = {c.name: c for c in src.carousels}
    model = [records.decode(d) for d in by_name["model"].records()]
    assert model == [r for r in recs if isinstance(r, OpcuaModel)]
    keyframe = [records.decode(d) for d in by_name["values"].records()]
    assert all(r.keyframe for r in keyframe) and _values(keyframe) == _values(recs)
    retained = [records.decode(d) for d in by_name["retained"].records()]
    assert {r.topic for r in retained} == set(mqtt_topics) and all(r.carousel for r in retained)
    # a re-send is what it repeats, byte for byte: RX's MQTT sink skips it
    live = {r.topic: r.payload for r in recs if isinstance(r, MqttMessage)}
    assert {r.topic: r.payload for r in retained} == live
    assert src.state == SourceState.STOPPED


def test_mqtt_only_or_opcua_only_channels_send_only_their_records() -> None:
    for kw, kinds in (({"opcua_mirror": ""}, {MqttMessage}),
                      ({"mqtt_channel": ""}, {OpcuaModel, OpcuaValues})):
        cfg = _channel(**kw)

        def bus(d: ModbusDevice, s: Counter[int]) -> FakeBus:
            return FakeBus(d, s, {}, set())
        ctx = TxContext(wake=lambda: None, fail=lambda m: None, open_spool=lambda n: None)
        recs = _run(ModbusSource(cfg, ctx, bus=bus), 0.2)
        assert {type(r) for r in recs} == kinds


# -- read-only ----------------------------------------------------------------------------


def test_the_package_names_no_write_request_and_builds_reads_only() -> None:
    pattern = re.compile(r"write_(coil|register)|Write\w*Request|MaskWrite|ReadWrite|"
                         r"\.write\(|diag|report_device", re.I)
    for path in MODBUS.glob("*.py"):
        code = "\n".join(line for line in path.read_text().splitlines()
                         if not line.lstrip().startswith("#"))
        assert not pattern.search(code), f"{path.name}: {pattern.search(code)}"
    from agent.modbus.bus import READ_REQUESTS
    assert {fc: cls.function_code for fc, cls in READ_REQUESTS.items()} == {1: 1, 2: 2, 3: 3, 4: 4}


def test_the_bus_refuses_to_put_anything_but_a_read_on_the_wire() -> None:
    from pymodbus.pdu.bit_message import WriteSingleCoilRequest
    from pymodbus.pdu.register_message import ReadHoldingRegistersRequest, WriteMultipleRegistersRequest

    from agent.modbus.bus import ReadOnlyBus
    dev = _channel().devices[0]
    sent: Counter[int] = Counter()

    async def go() -> None:  # pymodbus clients need a running loop
        bus = ReadOnlyBus(dev, sent)
        assert bus._outgoing(True, ReadHoldingRegistersRequest(address=0, count=1)) is not None
        for pdu in (WriteSingleCoilRequest(address=0, bits=[True]),
                    WriteMultipleRegistersRequest(address=0, registers=[1])):
            with pytest.raises(RuntimeError, match="only reads"):
                bus._outgoing(True, pdu)
        with pytest.raises(KeyError):
            await bus.read(6, 1, 0, 1)  # no request class for function 6
        bus.close()
    asyncio.run(go())
    assert sent == Counter({3: 1})


def test_stop_ends_a_poller_whose_cancel_was_swallowed() -> None:
    """Python 3.11's wait_for (inside pymodbus) can swallow a cancel that arrives as the
    answer does; the task would poll on and stop() would wait forever."""
    class Swallowing(FakeBus):
        async def read(self, function: int, unit_id: int, address: int,
                       count: int) -> Sequence[int]:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                pass  # the answer came anyway
            return [0] * count

    ctx = TxContext(wake=lambda: None, fail=lambda m: None, open_spool=lambda n: None)
    src = ModbusSource(_channel(), ctx, bus=lambda d, s: Swallowing(d, s, {}, set()))

    async def go() -> None:
        await src.start()
        await asyncio.sleep(0.2)
        await asyncio.wait_for(src.stop(), 5)
    asyncio.run(go())
    assert src.state == SourceState.STOPPED


def test_pymodbus_only_with_a_channel_and_never_asyncua_for_modbus() -> None:
    import subprocess
    import sys
    code = ("import sys, agent.protocols, agent.tx, agent.rx\n"
            "assert 'pymodbus' not in sys.modules\n"
            "import agent.modbus.source, agent.modbus.bus\n"
            "assert 'pymodbus' in sys.modules and 'asyncua' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
