"""Syslog through the diode: listeners on TX's OT side, collectors on RX's IT side.

config.py   [[syslog]] tables                codec.py        the SyslogMessage record
source.py   TX: UDP, TCP, TLS listeners      framing.py      octet counting / LF framing
sink.py     RX: fan-out to the collectors    collectors.py   UDP, TCP, TLS collectors
relay.py    RX: the relay header             backlog.py      RX: memory or spool per collector

Nothing here needs a library beyond Python's own.
"""

from __future__ import annotations

from typing import Any

from agent.adapter import Adapter, RxContext, Sink, Source, TxContext
from agent.link.records import Record
from agent.syslog import config
from agent.syslog.codec import SyslogMessage


def _source(cfg: Any, ctx: TxContext) -> Source:
    from agent.syslog.source import SyslogSource
    return SyslogSource(cfg, ctx)


def _sink(cfg: Any, ctx: RxContext) -> Sink:
    from agent.syslog.sink import SyslogSink
    return SyslogSink(cfg, ctx)


def _channel_of(record: Record) -> str | None:
    return record.channel if record.__class__ is SyslogMessage else None


ADAPTER = Adapter(name="syslog", parse=config.parse, check=config.check, source=_source,
                  sink=_sink, channel_of=_channel_of, record_types=(SyslogMessage,),
                  status_section="syslog")
