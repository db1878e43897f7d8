"""The Modbus register map: its config, the decoding of every type and order, and the
merging of reads into as few requests as the device allows."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import config
from agent.config import ConfigError
from agent.modbus.config import ModbusDevice, ModbusValue
from agent.modbus.decode import decode, element_bytes, encode_registers
from agent.modbus.plan import Read, merge, plan, requests_per_cycle, split

HEAD = '[link]\nkey_file = "k"\n'
CHANNEL = '[[modbus]]\nname = "plc"\nopcua_mirror = "plc"\n'
DEVICE = '[[modbus.devices]]\nname = "press1"\nhost = "127.0.0.1"\n'
VALUE = '[[modbus.devices.values]]\nname = "t"\naddress = 0\n'


def _load(tmp_path: Path, text: str, role: str = "tx") -> config.AgentConfig:
    p = tmp_path / f"{role}.toml"
    p.write_text(HEAD + text)
    return config.load(p, role)


# -- config ---------------------------------------------------------------------------


def test_a_channel_with_devices_and_values_loads_with_device_defaults(tmp_path: Path) -> None:
    cfg = _load(tmp_path, CHANNEL + 'mqtt_channel = "plant"\n'
                '[[modbus.devices]]\nname = "press1"\nhost = "127.0.0.1"\nunit_id = 3\n'
                'word_order = "little"\npoll_period = 0.5\n'
                '[[modbus.devices.values]]\nname = "t"\ntable = "input"\naddress = 4\n'
                'type = "float32"\nunit = "°C"\n'
                '[[modbus.devices.values]]\nname = "run"\ntable = "coil"\naddress = 0\n'
                'type = "bits"\nunit_id = 4\npoll_period = 2.0\n'
                '[[modbus.devices]]\nname = "pump"\nserial_port = "/dev/ttyUSB0"\nbaudrate = 9600\n'
                'values = [{name = "p", address = 1, type = "int16", scale = 0.1}]\n')
    (ch,) = cfg.channels["modbus"]
    assert ch.topic_prefix == "modbus/plc/" and ch.mqtt_channel == "plant"
    press, pump = ch.devices
    t, run = press.values
    assert (t.unit_id, t.word_order, t.poll_period, t.function, t.size) == (3, "little", 0.5, 4, 2)
    assert (run.unit_id, run.poll_period, run.function) == (4, 2.0, 1)
    assert pump.serial_port == "/dev/ttyUSB0" and pump.parity == "E" and pump.values[0].scaled
    assert [v.name for _, v in ch.values] == ["t", "run", "p"]


@pytest.mark.parametrize(("body", "key", "fix"), [
    (CHANNEL + '[[modbus.devices]]\nname = "d"\n' + VALUE, "host", "serial_port ="),
    (CHANNEL + '[[modbus.devices]]\nname = "d"\nhost = "h"\nserial_port = "/dev/x"\n' + VALUE,
     "host", "serial_port ="),
    (CHANNEL + DEVICE + VALUE + 'table = "holding"\ntype = "bits"\n', "type", '"coil"'),
    (CHANNEL + DEVICE + VALUE + 'table = "coil"\n', "type", '"bits"'),
    (CHANNEL + DEVICE + VALUE + 'type = "float64"\ncount = 32\n', "count", "split"),
    (CHANNEL + DEVICE + VALUE + VALUE, "name", "own name"),
    (CHANNEL + DEVICE + VALUE + 'type = "string"\nscale = 2.0\n', "scale", "remove"),
    (CHANNEL + DEVICE + VALUE + 'typ = "int16"\n', "typ", "did you mean 'type'"),
    (CHANNEL + DEVICE + '[[modbus.devices.values]]\nname = "a/b"\naddress = 0\n', "name", "press1"),
    (CHANNEL + DEVICE + '[[modbus.devices.values]]\nname = "t"\naddress = 65535\ntype = "uint32"\n',
     "address", "lower"),
    (CHANNEL + DEVICE, "values", "[[modbus.devices.values]]"),
    (CHANNEL, "devices", "[[modbus.devices]]"),
    ('[[modbus]]\nname = "plc"\n' + DEVICE + VALUE, "opcua_mirror", "mqtt_channel"),
    (CHANNEL + DEVICE + 'baudrate = 9600\n' + VALUE, "baudrate", "remove"),
    (CHANNEL + DEVICE + VALUE + DEVICE + VALUE, "name", "own name"),
    (CHANNEL + DEVICE + VALUE + CHANNEL.replace('"plc"\nopcua', '"plc2"\nopcua') + DEVICE + VALUE,
     "opcua_mirror", "own mirror"),
])
def test_map_mistakes_are_named_with_a_fix(tmp_path: Path, body: str, key: str, fix: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, body)
    msg = str(err.value)
    assert key in msg and "Fix:" in msg and fix in msg, msg


def test_rx_refuses_a_modbus_table_and_says_where_the_values_go(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"TX only.*\[\[opcua\]\]"):
        _load(tmp_path, CHANNEL + DEVICE + VALUE, role="rx")


def test_two_serial_devices_on_one_line_are_refused(tmp_path: Path) -> None:
    dev = '[[modbus.devices]]\nname = "{}"\nserial_port = "/dev/ttyS0"\n' + VALUE
    with pytest.raises(ConfigError, match="one serial line is one device"):
        _load(tmp_path, CHANNEL + dev.format("a") + dev.format("b"))


# -- decoding -------------------------------------------------------------------------


def _v(**kw: object) -> ModbusValue:
    return ModbusValue(**{"name": "v", "address": 0, **kw})  # type: ignore[arg-type]


def test_float32_in_the_four_common_layouts() -> None:
    # 123.456 as float32 is 0x42F6E979: A=42 B=F6 C=E9 D=79
    for word, byte, regs in (("big", "big", [0x42F6, 0xE979]), ("little", "big", [0xE979, 0x42F6]),
                             ("big", "little", [0xF642, 0x79E9]),
                             ("little", "little", [0x79E9, 0xF642])):
        v = _v(type="float32", word_order=word, byte_order=byte)
        assert decode(v, regs) == 123.456, (word, byte)
        assert encode_registers(v, 123.456) == regs


def test_integers_strings_bits_and_scaling() -> None:
    assert decode(_v(type="int16"), [0xFFFE]) == -2
    assert decode(_v(type="uint16"), [0xFFFE]) == 65534
    assert decode(_v(type="int32"), [0xFFFF, 0xFFFF]) == -1
    assert decode(_v(type="uint32", word_order="little"), [0x0002, 0x0001]) == 0x00010002
    assert decode(_v(type="float64"), encode_registers(_v(type="float64"), math.pi)) == math.pi
    assert decode(_v(type="int16", scale=0.1), [215]) == 21.5
    assert decode(_v(type="int16", scale=0.1, offset=-40.0), [0xFFFF]) == -40.1
    assert decode(_v(type="string", count=4), [0x4142, 0x4300, 0x5858, 0x5858]) == "ABC"
    assert decode(_v(type="string", count=2, byte_order="little"), [0x4241, 0x0043]) == "ABC"
    assert decode(_v(type="uint16", count=3), [1, 2, 3]) == [1, 2, 3]
    assert decode(_v(table="coil", type="bits"), [True]) is True
    assert decode(_v(table="coil", type="bits", count=3), [1, 0, 1]) == [True, False, True]
    with pytest.raises(ValueError):
        decode(_v(type="int32"), [1])
    assert element_bytes([0x0102, 0x0304], "little", "little") == bytes((4, 3, 2, 1))


@given(st.sampled_from(["int16", "uint16", "int32", "uint32", "float32", "float64"]),
       st.sampled_from(["big", "little"]), st.sampled_from(["big", "little"]),
       st.lists(st.integers(0, 0xFFFF), min_size=12, max_size=12))
def test_any_registers_decode_and_encode_back(typ: str, word: str, byte: str,
                                              regs: list[int]) -> None:
    v = _v(type=typ, word_order=word, byte_order=byte, count=3)
    x = decode(v, regs)
    assert len(x) == 3
    if typ.startswith("float") and any(math.isnan(e) for e in x):
        return  # NaN payloads are not unique
    assert encode_registers(v, x) == regs[:v.size]


# -- planning -------------------------------------------------------------------------


def _dev(**kw: object) -> ModbusDevice:
    return ModbusDevice(**{"name": "d", "host": "h", **kw})  # type: ignore[arg-type]


def test_adjacent_and_near_values_share_a_request_within_the_limits() -> None:
    values = [(0, _v(address=0)), (1, _v(address=1, type="float32")), (2, _v(address=10)),
              (3, _v(address=40)), (4, _v(address=5, table="input")),
              (5, _v(address=3, unit_id=2)), (6, _v(address=100, poll_period=5.0))]
    reads = plan(_dev(max_gap=8), values)
    assert reads[1.0] == [
        Read(3, 1, 0, 11, ((0, 0), (1, 1), (2, 10))), Read(3, 1, 40, 1, ((3, 0),)),
        Read(4, 1, 5, 1, ((4, 0),)), Read(3, 2, 3, 1, ((5, 0),))]
    assert reads[5.0] == [Read(3, 1, 100, 1, ((6, 0),))]
    assert requests_per_cycle(reads) == 5
    assert [r.count for r in plan(_dev(max_gap=0), values[:3])[1.0]] == [3, 1]


def test_requests_never_exceed_max_registers_or_max_bits() -> None:
    regs = [(i, _v(address=i * 2, type="uint32")) for i in range(500)]  # 1,000 registers
    for limit, expected in ((125, 9), (100, 10), (10, 100)):  # 124 = 62 uint32 a request
        reads = plan(_dev(max_registers=limit), regs)[1.0]
        assert len(reads) == expected and all(r.count <= limit for r in reads)
        assert sum(len(r.items) for r in reads) == 500
    bits = [(i, _v(table="coil", type="bits", address=i)) for i in range(5000)]
    reads = plan(_dev(), bits)[1.0]
    assert [r.count for r in reads] == [2000, 2000, 1000]


def test_a_refused_merged_read_splits_into_its_contiguous_runs() -> None:
    values = [_v(address=0), _v(address=1), _v(address=5, type="int32")]
    (r,) = merge(3, 1, list(enumerate(values)), 125, 8)
    assert split(r, values) == [Read(3, 1, 0, 2, ((0, 0), (1, 1))), Read(3, 1, 5, 2, ((2, 0),))]


def test_the_commented_examples_in_board_config_load_once_uncommented(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[3]
    for role, marker in (("tx", "# [[modbus]]"), ("rx", "# [[opcua]]")):
        text = (repo / "board" / "config" / f"{role}.toml").read_text()
        head, _, tail = text.partition(marker)
        assert tail, f"{role}.toml has no commented {marker}"
        (tmp_path / f"{role}.toml").write_text(
            head + re.sub(r"^# ?", "", marker + tail, flags=re.M))
    (tmp_path / "it-ca.crt").write_text("dummy")
    tx = config.load(tmp_path / "tx.toml", "tx")
    rx = config.load(tmp_path / "rx.toml", "rx")
    (ch,) = tx.channels["modbus"]
    assert ch.opcua_mirror in {m.name for m in rx.channels["opcua"]}
    assert ch.mqtt_channel in {m.name for m in rx.channels["mqtt"]}
    assert [v.name for _, v in ch.values] == ["oil_temperature", "flow"]
