"""MQTT through the diode: OT brokers on TX, IT brokers on RX.

config.py   [[mqtt]] tables            codec.py     the MqttMessage record
source.py   TX: OT broker subscriber   sink.py      RX: IT broker publisher
outbox.py   RX: memory or spool        connection.py, props.py: paho and v5 properties
"""

from __future__ import annotations

from typing import Any

from agent.adapter import Adapter, RxContext, Sink, Source, TxContext
from agent.config_reader import Table
from agent.link.records import Record
from agent.mqtt import config
from agent.mqtt.codec import MqttMessage


def _source(cfg: Any, ctx: TxContext) -> Source:
    from agent.mqtt.source import MqttSource
    return MqttSource(cfg, ctx)


def _sink(cfg: Any, ctx: RxContext) -> Sink:
    from agent.mqtt.sink import MqttSink
    return MqttSink(cfg, ctx)


def _channel_of(record: Record) -> str | None:
    return record.channel if record.__class__ is MqttMessage else None


def _check(tables: list[Table], configs: list[Any], link: Any) -> None:
    pass


ADAPTER = Adapter(name="mqtt", parse=config.parse, check=_check, source=_source, sink=_sink,
                  channel_of=_channel_of, record_types=(MqttMessage,), status_section="sinks",
                  largest_record=lambda ch: ch.largest_record,
                  order_key=lambda rec: (rec.channel, rec.topic))  # type: ignore[attr-defined]
