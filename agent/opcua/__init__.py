"""OPC UA through the diode: a plant server's address space and values on TX,
a read-only mirror server on RX. asyncua is imported only when a channel is
configured (it costs an MQTT-only agent about 18 MB).

config.py  [[opcua]] tables        codec.py   OpcuaModel, OpcuaModelPart, OpcuaValues,
                                              OpcuaNotifiers, OpcuaEvents
source.py  TX: client, crawl.py    mirror.py  RX: server, build.py, access.py
model.py   the address-space snapshot on the link; growth.py: its first crawl, part by
           part; ua.py, certs.py: helpers
services.py  the mirror's Read, Write, Call, HistoryRead, monitored items as the spec
             says: index_range.py, history_read.py, history_processed.py
history_store.py  the mirror's on-disk history     ticks.py  100 ns DateTimes in asyncua
events.py  TX: which notifiers and event fields to carry; mirror_events.py: RX re-emits them
TX's connection: commissioning.py (refusals, with the fix), backoff.py (when to try
again), fingerprint.py (is the cached model still right), model_cache.py (it, across
restarts); expiry.py (own certificates). What TX asks of the plant: budget.py,
subscriptions.py, change_watch.py (model changes without events)
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from agent.adapter import Adapter, RxContext, Sink, Source, TxContext
from agent.link.records import Record
from agent.opcua import config
from agent.opcua.codec import (
    OpcuaEvents,
    OpcuaModel,
    OpcuaModelPart,
    OpcuaNotifiers,
    OpcuaValues,
)

_RECORDS = (OpcuaModel, OpcuaModelPart, OpcuaValues, OpcuaNotifiers, OpcuaEvents)


def _source(cfg: Any, ctx: TxContext) -> Source:
    from agent.opcua.source import OpcuaSource
    return OpcuaSource(cfg, ctx.wake, ctx.data_dir(f"{cfg.name}.opcua-model"))


def _sink(cfg: Any, ctx: RxContext) -> Sink:
    from agent.opcua.mirror import OpcuaMirror
    if cfg.history_nodes and cfg.history_dir is None:  # the config made sure there is a spool
        cfg = replace(cfg, history_dir=ctx.data_dir(f"{cfg.name}.opcua-history"))
    return OpcuaMirror(cfg)


def _order_key(record: Record) -> tuple[str, str] | None:
    """A model replaces the one before, and so do the notifiers; values carry source
    timestamps the mirror compares, and events are not state: they need no key."""
    if record.__class__ is OpcuaModel:
        return (record.source, "model")
    if record.__class__ is OpcuaNotifiers:
        return (record.source, "notifiers")
    return None


def _channel_of(record: Record) -> str | None:
    if record.__class__ in _RECORDS:
        return record.source
    return None


ADAPTER = Adapter(name="opcua", parse=config.parse, check=config.check, source=_source,
                  sink=_sink, channel_of=_channel_of, record_types=_RECORDS,
                  status_section="opcua", order_key=_order_key)
