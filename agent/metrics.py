"""Prometheus metrics on the IT side (RX only; TX exposes no port at all).

Read from the agent's status snapshot at scrape time, so the hot path pays
nothing. TX's own counters arrive inside its heartbeats and are exported here
with the `diode_tx_` prefix.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

_STATES = ("UP", "DEGRADED", "DOWN")


def _name(raw: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", raw)


class RxCollector(Collector):
    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.status = status

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        st = self.status()
        state = GaugeMetricFamily("diode_link_state", "1 for the current link state",
                                  labels=["state"])
        for s in _STATES:
            state.add_metric([s], 1.0 if st.get("link_state") == s else 0.0)
        yield state
        age = st.get("last_heartbeat_age_s")
        yield GaugeMetricFamily("diode_last_heartbeat_age_seconds",
                                "Seconds since TX's last heartbeat (-1: none yet)",
                                value=-1.0 if age is None else float(age))
        yield GaugeMetricFamily("diode_datagram_loss_ratio",
                                "Datagram loss over the health window",
                                value=float(st.get("datagram_loss") or 0.0))
        link = CounterMetricFamily("diode_link", "Link receiver counters", labels=["counter"])
        for k, v in (st.get("link") or {}).items():
            link.add_metric([k], float(v))
        yield link
        sink = CounterMetricFamily("diode_sink", "Per-channel sink counters",
                                   labels=["channel", "counter"])
        up = GaugeMetricFamily("diode_sink_connected", "1 when the IT broker is connected",
                               labels=["channel"])
        for name, s in (st.get("sinks") or {}).items():
            up.add_metric([name], 1.0 if s.get("state") == "connected" else 0.0)
            for k, v in s.items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    sink.add_metric([name, k], float(v))
        yield sink
        yield up
        spool = GaugeMetricFamily("diode_spool", "RX spool state per channel (fill_bytes, "
                                  "records, oldest_age_s, dropped_*, damaged, ...)",
                                  labels=["channel", "field"])
        for name, s in (st.get("sinks") or {}).items():
            for k, v in (s.get("spool") or {}).items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    spool.add_metric([name, k], float(v))
        yield spool
        transport = CounterMetricFamily("diode_transport", "Link transport counters (serial: "
                                        "crc_errors, framing_errors, bytes_received)",
                                        labels=["counter"])
        for k, v in (st.get("transport") or {}).items():
            transport.add_metric([k], float(v))
        yield transport
        tx = st.get("tx") or {}
        txc = CounterMetricFamily("diode_tx", "TX counters from its heartbeats",
                                  labels=["counter"])
        for k, v in (tx.get("counters") or {}).items():
            txc.add_metric([_name(k)], float(v))
        yield txc
        src = GaugeMetricFamily("diode_tx_source_connected",
                                "1 when TX reports the source connected", labels=["source"])
        for k, v in (tx.get("sources") or {}).items():
            src.add_metric([k], 1.0 if v == "connected" else 0.0)
        yield src


def serve(status: Callable[[], dict[str, Any]], host: str, port: int) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(RxCollector(status))
    start_http_server(port, addr=host, registry=registry)
    return registry
