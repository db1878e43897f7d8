"""How a Modbus value appears on RX, as records the OPC UA and MQTT channels already
carry. Pure: no asyncua, no pymodbus.

OPC UA (an RX `[[opcua]]` mirror named by `opcua_mirror`): an address-space
snapshot (agent/opcua/model.py) of its own namespace, ``urn:diode:modbus:<channel>``
at index 1::

    Objects
      Modbus                        Folder               ns=1;s=Modbus
        <device>                    Folder               ns=1;s=<device>
          <value>                   BaseDataVariable     ns=1;s=<device>/<value>
            EngineeringUnits        Property (EUInformation), when `unit` is set

Each variable's DataType is the value's (Double when scaled), its ValueRank
-1 or 1 (an array when count > 1), AccessLevel CurrentRead, its
MinimumSamplingInterval the poll period, its Description the value's
`description` or where it is read from. Live values are `OpcuaValues` entries:
the value as a Variant, a StatusCode (Good, or Bad with a null value when the
device does not answer) and both timestamps set to when the value (or its
status) last changed, so a carousel re-send is identical to what it repeats.

MQTT (an RX `[[mqtt]]` channel named by `mqtt_channel`): one retained topic
per value, `<topic_prefix><device>/<value>`, with a JSON object::

    {"value": 21.5, "quality": "good", "timestamp": "2024-05-01T12:00:00.000Z", "unit": "°C"}

`quality` is "good" or "bad" (then `value` is null and `status` names the
OPC UA code, e.g. "BadNoCommunication"); `unit` only when set.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from agent.modbus import uabin
from agent.modbus.config import ModbusChannel, ModbusDevice, ModbusValue
from agent.modbus.decode import ua_type
from agent.opcua.codec import OpcuaValue
from agent.opcua.model import ModelSnapshot, NodeRecord

UA_NAMESPACE = "http://opcfoundation.org/UA/"
NS = 1
FOLDER = "Modbus"

# StatusCodes (OPC UA Part 4, 7.34; the values asyncua's ua.StatusCodes has)
GOOD = 0
BAD_NO_COMMUNICATION = 0x80310000     # the device does not answer
BAD_DEVICE_FAILURE = 0x808B0000       # it answers with an exception
BAD_CONFIGURATION_ERROR = 0x80890000  # it has no such address or function: the map is wrong
STATUS_NAMES = {GOOD: "Good", BAD_NO_COMMUNICATION: "BadNoCommunication",
                BAD_DEVICE_FAILURE: "BadDeviceFailure",
                BAD_CONFIGURATION_ERROR: "BadConfigurationError"}

# Attribute ids, node classes and standard node ids (Part 6, A.1; Part 3)
_BROWSE_NAME, _DISPLAY_NAME, _DESCRIPTION = 3, 4, 5
_DATA_TYPE, _VALUE_RANK, _ARRAY_DIMENSIONS, _ACCESS_LEVEL, _USER_ACCESS_LEVEL = 14, 15, 16, 17, 18
_MIN_SAMPLING, _VALUE = 19, 13
_OBJECT, _VARIABLE = 1, 2
_OBJECTS_FOLDER, _ORGANIZES, _HAS_COMPONENT, _HAS_PROPERTY = "i=85", "i=35", "i=47", "i=46"
_FOLDER_TYPE, _BASE_DATA_VARIABLE_TYPE, _PROPERTY_TYPE = "i=61", "i=63", "i=68"
_CURRENT_READ = 1
_UNIX_EPOCH_TICKS = 116444736000000000  # 1970-01-01 in 100 ns ticks since 1601-01-01


def namespace(channel: str) -> str:
    return f"urn:diode:modbus:{channel}"


def node_id(device: str, value: str | None = None) -> str:
    return f"ns={NS};s={device}" if value is None else f"ns={NS};s={device}/{value}"


def ticks(wall: float) -> int:
    return int(wall * 10_000_000) + _UNIX_EPOCH_TICKS


def _where(d: ModbusDevice, v: ModbusValue) -> str:
    return f"{v.table} {v.address} ({v.type}{f'[{v.count}]' if v.count > 1 else ''}), unit " \
           f"{v.unit_id}, {d.label}"


def _object(nid: str, name: str, parent: str, ref: str) -> NodeRecord:
    return NodeRecord(nid, _OBJECT, parent, ref, _FOLDER_TYPE, {
        _BROWSE_NAME: uabin.variant_qualified_name(name, NS),
        _DISPLAY_NAME: uabin.variant_localized_text(name)})


def _variable(d: ModbusDevice, v: ModbusValue) -> list[NodeRecord]:
    nid = node_id(d.name, v.name)
    array = v.count > 1 and v.type != "string"
    attrs = {
        _BROWSE_NAME: uabin.variant_qualified_name(v.name, NS),
        _DISPLAY_NAME: uabin.variant_localized_text(v.name),
        _DESCRIPTION: uabin.variant_localized_text(v.description or _where(d, v)),
        _DATA_TYPE: uabin.variant_node_id(ua_type(v)),
        _VALUE_RANK: uabin.variant(uabin.INT32, 1 if array else -1),
        _ACCESS_LEVEL: uabin.variant(uabin.BYTE, _CURRENT_READ),
        _USER_ACCESS_LEVEL: uabin.variant(uabin.BYTE, _CURRENT_READ),
        _MIN_SAMPLING: uabin.variant(uabin.DOUBLE, v.poll_period * 1000.0),
    }
    if array:
        attrs[_ARRAY_DIMENSIONS] = uabin.variant_uint32_array([v.count])
    out = [NodeRecord(nid, _VARIABLE, node_id(d.name), _HAS_COMPONENT,
                      _BASE_DATA_VARIABLE_TYPE, attrs)]
    if v.unit:
        eu = f"{nid}/EngineeringUnits"
        out.append(NodeRecord(eu, _VARIABLE, nid, _HAS_PROPERTY, _PROPERTY_TYPE, {
            _BROWSE_NAME: uabin.variant_qualified_name("EngineeringUnits", 0),
            _DISPLAY_NAME: uabin.variant_localized_text("EngineeringUnits"),
            _DATA_TYPE: uabin.variant_node_id(uabin.EU_INFORMATION),
            _VALUE_RANK: uabin.variant(uabin.INT32, -1),
            _ACCESS_LEVEL: uabin.variant(uabin.BYTE, _CURRENT_READ),
            _USER_ACCESS_LEVEL: uabin.variant(uabin.BYTE, _CURRENT_READ),
            _VALUE: uabin.variant_eu_information(v.unit)}))
    return out


def snapshot(ch: ModbusChannel) -> ModelSnapshot:
    """The address space the mirror serves for this channel (parents before children)."""
    root = f"ns={NS};s={FOLDER}"
    nodes = [_object(root, FOLDER, _OBJECTS_FOLDER, _ORGANIZES)]
    for d in ch.devices:
        nodes.append(_object(node_id(d.name), d.name, root, _ORGANIZES))
        for v in d.values:
            nodes += _variable(d, v)
    return ModelSnapshot((UA_NAMESPACE, namespace(ch.name)), tuple(nodes))


def opcua_entry(nid: str, v: ModbusValue, value: Any, status: int, wall: float) -> OpcuaValue:
    t = ticks(wall)
    if status != GOOD or value is None:
        return (nid, uabin.NULL, status, t, t)
    return (nid, uabin.variant(ua_type(v), value), status, t, t)


def topic(ch: ModbusChannel, d: ModbusDevice, v: ModbusValue) -> str:
    return f"{ch.topic_prefix}{d.name}/{v.name}"


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None  # JSON has no NaN or infinity
    if isinstance(x, list):
        return [_json_safe(i) for i in x]
    return x


def mqtt_payload(v: ModbusValue, value: Any, status: int, wall: float) -> bytes:
    stamp = datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")
    doc: dict[str, Any] = {"value": _json_safe(value) if status == GOOD else None,
                           "quality": "good" if status == GOOD else "bad",
                           "timestamp": stamp.replace("+00:00", "Z")}
    if status != GOOD:
        doc["status"] = STATUS_NAMES.get(status, f"0x{status:08X}")
    if v.unit:
        doc["unit"] = v.unit
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
