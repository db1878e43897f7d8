"""Modbus through the diode, read-only: TX polls Modbus TCP and RTU devices
(pymodbus) and the values appear on RX in an OPC UA mirror and on MQTT.

config.py   [[modbus]] tables (TX only)    plan.py     the map -> merged read requests
poller.py   one task per device            bus.py      pymodbus, the four read functions only
decode.py   registers -> values            outputs.py  OPC UA nodes and values, MQTT topics
source.py   TX: the channel's records      uabin.py    the OPC UA binary encodings it needs

No records and no RX sink of its own: the source emits the records the OPC UA
and MQTT channels already carry (an address-space snapshot and OpcuaValues for
the RX `[[opcua]]` mirror named `opcua_mirror`, retained MqttMessages for the
RX `[[mqtt]]` channel named `mqtt_channel`). RX needs no Modbus code (nor
pymodbus), IT clients see an ordinary OPC UA server and broker, and the
mirror's read-only rules and link quality apply to these values unchanged.
pymodbus is imported only when a channel is configured (by the source).
"""

from __future__ import annotations

from typing import Any

from agent.adapter import Adapter, RxContext, Sink, Source, TxContext
from agent.errors import ConfigError
from agent.link.records import Record
from agent.modbus import config


def _source(cfg: Any, ctx: TxContext) -> Source:
    from agent.modbus.source import ModbusSource
    return ModbusSource(cfg, ctx)


def _sink(cfg: Any, ctx: RxContext) -> Sink:
    # parse() refuses [[modbus]] on RX, so no sink is ever asked for.
    raise ConfigError("[[modbus]] has no RX side: its values arrive through [[opcua]] and "
                      "[[mqtt]]. Fix: remove [[modbus]] from rx.toml")


def _channel_of(record: Record) -> str | None:
    return None  # no records of its own


ADAPTER = Adapter(name="modbus", parse=config.parse, check=config.check, source=_source,
                  sink=_sink, channel_of=_channel_of, record_types=(), status_section="modbus")
