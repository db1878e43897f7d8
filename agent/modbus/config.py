"""Configuration of the Modbus channels: `[[modbus]]` tables of tx.toml.

A channel is a set of devices polled by TX; each device is one connection
(Modbus TCP `host`, or a Modbus RTU `serial_port`) and its register map:

    [[modbus]]                      # a channel
    name = "plc"
    opcua_mirror = "plc"            # RX [[opcua]] mirror that serves the values
    mqtt_channel = "plant"          # RX [[mqtt]] channel that publishes them
    [[modbus.devices]]              # one connection, one asyncio task
    name = "press1"
    host = "192.0.2.20"
    [[modbus.devices.values]]       # one value of its register map
    name = "temperature"
    table = "input"
    address = 0
    type = "int16"
    scale = 0.1
    unit = "°C"

RX has no `[[modbus]]` table: the values arrive as records of the OPC UA and
MQTT channels named here (agent/modbus/__init__.py says why). Names only: no
pymodbus here.

Every key is declared once, on the dataclasses below; the README's tables are
generated from them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from agent.config_reader import Table, read, setting

# table -> Modbus read function code
TABLES = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
# type -> registers per element (bits: one bit per element)
WIDTHS = {"bits": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2,
          "float64": 4, "string": 1}
TYPES = tuple(WIDTHS)
ORDERS = ("big", "little")
PARITIES = ("N", "E", "O")
MAX_REGISTERS = 125  # per read request (Modbus application protocol, 6.3)
MAX_BITS = 2000      # per read request (6.1)
_NAME_FORBIDDEN = set("/+#")  # MQTT topic levels and wildcards; "/" also separates node ids


@dataclass(frozen=True, kw_only=True)
class ModbusValue:
    """One `[[modbus.devices.values]]` entry: a value of a device's register map."""
    name: str = setting(doc="the value's name (unique in its device): its OPC UA browse name "
                        "and its MQTT topic's last level", example='"temperature"')
    table: str = setting("holding", doc="`coil` (function 1), `discrete` (2), `holding` (3) or "
                         "`input` (4)", example='"input"', choices=tuple(TABLES))
    address: int = setting(doc="first register or bit, 0-based as on the wire (holding register "
                           "40001 is 0)", example="0", lo=0, hi=65535)
    type: str = setting("uint16", doc=", ".join(f"`{t}`" for t in TYPES) + " (`bits` for "
                        "coils and discrete inputs only)", example='"float32"', choices=TYPES)
    count: int = setting(1, doc="elements; more than 1 makes an array. For `string`: its length "
                         "in registers (2 characters each)", example="1", lo=1, hi=MAX_BITS)
    word_order: str = setting("big", doc="32- and 64-bit types: `big` puts the most significant "
                              "register first", example='"little"', choices=ORDERS,
                              default_doc="the device's")
    byte_order: str = setting("big", doc="within each register: `big` is the Modbus standard",
                              example='"big"', choices=ORDERS, default_doc="the device's")
    scale: float = setting(1.0, doc="value = raw × scale + offset (numeric types; a scaled value "
                           "is a Double)", example="0.1")
    offset: float = setting(0.0, doc="added after scaling", example="-40.0")
    unit: str = setting("", doc="engineering unit: OPC UA EngineeringUnits, MQTT `unit`",
                        example='"°C"')
    unit_id: int = setting(1, doc="Modbus unit id (slave address)", example="1", lo=0, hi=255,
                           default_doc="the device's")
    poll_period: float = setting(1.0, doc="seconds between two reads", example="1.0", lo=0.05,
                                 hi=86400, default_doc="the device's")
    description: str = setting("", doc="OPC UA Description", example='"oil temperature"')

    @property
    def function(self) -> int:
        return TABLES[self.table]

    @property
    def size(self) -> int:
        """Registers (or bits) read for this value."""
        return self.count * WIDTHS[self.type]

    @property
    def scaled(self) -> bool:
        return self.scale != 1.0 or self.offset != 0.0


@dataclass(frozen=True)
class ModbusDevice:
    """One `[[modbus.devices]]` table: one connection, polled by its own task."""
    name: str = setting(doc="the device's name (unique in its channel): its OPC UA folder and "
                        "MQTT topic level", example='"press1"')
    host: str = setting("", doc="Modbus TCP: the device's address (set `host` or `serial_port`)",
                        example='"192.0.2.20"')
    port: int = setting(502, doc="Modbus TCP port", example="502", lo=1, hi=65535)
    serial_port: str = setting("", doc="Modbus RTU: the serial port", example='"/dev/ttyUSB0"')
    baudrate: int = setting(19200, doc="Modbus RTU", example="19200", lo=300, hi=4_000_000)
    parity: str = setting("E", doc="Modbus RTU: `N`, `E` or `O`", example='"E"',
                          choices=PARITIES)
    stopbits: int = setting(1, doc="Modbus RTU", example="1", choices=(1, 2))
    unit_id: int = setting(1, doc="Modbus unit id of its values (a value may set its own, e.g. "
                           "behind a gateway)", example="1", lo=0, hi=255)
    poll_period: float = setting(1.0, doc="seconds between two reads of a value",
                                 example="1.0", lo=0.05, hi=86400)
    requests_per_second: float = setting(20.0, doc="the most TX asks of this device",
                                         example="20.0", lo=0.1, hi=10000)
    timeout: float = setting(1.0, doc="seconds to wait for an answer", example="1.0", lo=0.05,
                             hi=60)
    retries: int = setting(1, doc="re-sends of an unanswered request before its values turn Bad",
                           example="1", lo=0, hi=10)
    backoff_min: float = setting(1.0, doc="first wait after a failure; it doubles up to "
                                 "`backoff_max`", example="1.0", lo=0.05, hi=3600)
    backoff_max: float = setting(30.0, doc="longest wait between two tries", example="30.0",
                                 lo_field="backoff_min", hi=86400)
    max_registers: int = setting(MAX_REGISTERS, doc="registers per read request", example="125",
                                 lo=1, hi=MAX_REGISTERS)
    max_bits: int = setting(MAX_BITS, doc="coils or discrete inputs per read request",
                            example="2000", lo=1, hi=MAX_BITS)
    max_gap: int = setting(8, doc="unmapped registers (or bits) one request may read between two "
                           "values, to merge them; `0`: adjacent values only", example="8", lo=0,
                           hi=MAX_BITS)
    word_order: str = setting("big", doc="default of its values", example='"big"', choices=ORDERS)
    byte_order: str = setting("big", doc="default of its values", example='"big"', choices=ORDERS)
    values: tuple[ModbusValue, ...] = setting((), doc="the register map: `[[modbus.devices."
                                              "values]]` tables", example="[]", manual=True,
                                              default_doc="required")

    @property
    def label(self) -> str:
        where = self.serial_port or f"{self.host}:{self.port}"
        return f"Modbus device '{self.name}' ({where})"


@dataclass(frozen=True)
class ModbusChannel:
    """One `[[modbus]]` table of tx.toml."""
    name: str = setting(doc="channel name: TX's heartbeat and status name the source "
                        "`modbus:<name>`", example='"plc"')
    opcua_mirror: str = setting("", doc="the RX `[[opcua]]` mirror of this name serves the values "
                                "under Objects/Modbus; `\"\"` for none", example='"plc"')
    mqtt_channel: str = setting("", doc="the RX `[[mqtt]]` channel of this name publishes each "
                                "value (retained JSON); `\"\"` for none", example='"plant"')
    topic_prefix: str = setting("", doc="MQTT topics: `<topic_prefix><device>/<value>`",
                                example='"modbus/plc/"', default_doc="`modbus/<name>/`")
    qos: int = setting(1, doc="of the MQTT messages", example="1", choices=(0, 1, 2))
    carousel_period: float = setting(15.0, doc="re-send of the address space and of every value, "
                                     "for an RX that (re)starts", example="15.0", lo=1.0)
    carousel_share: float = setting(0.1, doc="share of the link each re-send may use",
                                    example="0.1", lo=0.001, hi=1.0)
    batch_bytes: int = setting(1200, doc="bytes of OPC UA values per record", example="1200",
                               lo=200, hi=1 << 20)
    model_chunk_size: int = setting(16384, doc="bytes of the address space per record",
                                    example="16384", lo=512, hi=1 << 20)
    devices: tuple[ModbusDevice, ...] = setting((), doc="`[[modbus.devices]]` tables",
                                                example="[]", manual=True, default_doc="required")

    @property
    def values(self) -> list[tuple[ModbusDevice, ModbusValue]]:
        """Every value of the channel, in order: its index is the value's index everywhere."""
        return [(d, v) for d in self.devices for v in d.values]


def _check_name(t: Table, key: str, name: str) -> None:
    if not name.strip() or _NAME_FORBIDDEN & set(name):
        t.fail(key, f"{name!r} is empty or holds one of / + #", f'{key} = "press1"')


def _value(t: Table, dev: ModbusDevice) -> ModbusValue:
    v = read(t, ModbusValue, {"word_order": dev.word_order, "byte_order": dev.byte_order,
                              "unit_id": dev.unit_id, "poll_period": dev.poll_period})
    _check_name(t, "name", v.name)
    bits = v.table in ("coil", "discrete")
    if bits != (v.type == "bits"):
        t.fail("type", f"type {v.type!r} cannot be read from table {v.table!r}",
               'type = "bits" with table "coil" or "discrete"; a register type with "holding" '
               'or "input"')
    limit = dev.max_bits if bits else dev.max_registers
    if v.size > limit:
        t.fail("count", f"{v.size} {'bits' if bits else 'registers'} do not fit one read request "
               f"(the device's max_{'bits' if bits else 'registers'} is {limit})",
               "split the value, or lower count")
    if v.address + v.size > 65536:
        t.fail("address", f"the value ends past address 65535 ({v.address} + {v.size})",
               "lower address or count")
    if v.scaled and v.type in ("bits", "string"):
        t.fail("scale", f"a {v.type} value cannot be scaled", "remove scale and offset")
    return v


def _device(t: Table) -> ModbusDevice:
    dev = read(t, ModbusDevice)
    _check_name(t, "name", dev.name)
    if bool(dev.host) == bool(dev.serial_port):
        t.fail("host", "a device needs either host (Modbus TCP) or serial_port (Modbus RTU)",
               'host = "192.0.2.20", or serial_port = "/dev/ttyUSB0"')
    tcp_only, rtu_only = ("port",), ("baudrate", "parity", "stopbits")
    for key in rtu_only if dev.host else tcp_only:
        if key in t.data:
            t.fail(key, f"set but this is a Modbus {'TCP' if dev.host else 'RTU'} device",
                   "remove it")
    tables = t.tables("values")
    if not tables:
        t.fail("values", "a device without values", "add [[modbus.devices.values]] tables")
    values = []
    names: set[str] = set()
    for vt in tables:
        v = _value(vt, dev)
        if v.name in names:
            vt.fail("name", f"two values of device {dev.name!r} are named {v.name!r}",
                    "give each value its own name")
        names.add(v.name)
        vt.done()
        values.append(v)
    return replace(dev, values=tuple(values))


def parse(t: Table, role: str, spooled: bool) -> ModbusChannel:
    """One `[[modbus]]` table of tx.toml; ConfigError names file, key and fix."""
    if role != "tx":
        t.fail("", "[[modbus]] is read by TX only: RX shows Modbus values through the [[opcua]] "
               "mirror and the [[mqtt]] channel named by TX's opcua_mirror and mqtt_channel",
               "remove [[modbus]] from rx.toml; configure those [[opcua]] and [[mqtt]] tables")
    name = t.get("name", str, example='"plc"')
    ch = read(t, ModbusChannel, {"topic_prefix": f"modbus/{name}/"})
    if not ch.opcua_mirror and not ch.mqtt_channel:
        t.fail("opcua_mirror", "the values would go nowhere: neither opcua_mirror nor "
               "mqtt_channel is set", 'opcua_mirror = "plc" and/or mqtt_channel = "plant"')
    if ch.topic_prefix and (set("+#") & set(ch.topic_prefix)):
        t.fail("topic_prefix", "MQTT wildcards (+ #) in a topic", 'topic_prefix = "modbus/plc/"')
    tables = t.tables("devices")
    if not tables:
        t.fail("devices", "a channel without devices", "add [[modbus.devices]] tables")
    devices: list[ModbusDevice] = []
    for dt in tables:
        dev = _device(dt)
        for other in devices:
            if other.name == dev.name:
                dt.fail("name", f"two devices are named {dev.name!r}", "give each its own name")
            if dev.serial_port and other.serial_port == dev.serial_port:
                dt.fail("serial_port", f"{dev.serial_port} is already device {other.name!r}: one "
                        "serial line is one device", "list both units' values under one device, "
                        "each with its unit_id")
        dt.done()
        devices.append(dev)
    return replace(ch, devices=tuple(devices))


def check(tables: list[Table], configs: list[ModbusChannel], link: Any) -> None:
    """Two channels cannot feed one mirror (each would replace the other's address space)."""
    mirrors = [c.opcua_mirror for c in configs if c.opcua_mirror]
    for t, c in zip(tables, configs, strict=True):
        if c.opcua_mirror and mirrors.count(c.opcua_mirror) > 1:
            t.fail("opcua_mirror", f"mirror {c.opcua_mirror!r} is fed by two [[modbus]] channels",
                   "put both channels' devices into one channel, or give each its own mirror")
