"""Prometheus metrics on the IT side (RX only; TX exposes no port at all).

Read from the agent's status snapshot at scrape time, so the hot path pays
nothing. TX's own counters arrive inside its heartbeats and are exported here
with the `diode_tx_` prefix.

```
scraper ─► MetricsServer (asyncio, in RX's loop) ─► RxCollector ─► RxAgent.status()
           at most MAX_CONNECTIONS at once (more: closed at once)
           request head <= MAX_REQUEST_BYTES, whole exchange <= TIMEOUT s
           output cached CACHE_SECONDS, so a scrape flood costs no status snapshots
```

Not prometheus_client's own server: it runs a thread per connection with no
timeout, so about a thousand idle connections took all of RX's 1,024 file
descriptors and the spool then failed with EMFILE. This one answers GET or
HEAD /metrics (and /) with the same text format (OpenMetrics when asked by
Accept, `name[]` filters as prometheus_client does), then closes.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from agent.adapter import HEALTHY_SINK
from agent.listener_limits import RefusalLog
from agent.protocols import ADAPTERS

log = logging.getLogger("diode.metrics")

MAX_CONNECTIONS = 16
MAX_REQUEST_BYTES = 8192  # request line and headers; no body is read
TIMEOUT = 5.0             # seconds for a client to send its request and take the answer
CACHE_SECONDS = 0.25

_STATES = ("UP", "DEGRADED", "DOWN")
# every protocol's sinks, from the status section the registry names for it
_SECTIONS = tuple((a.name, a.status_section) for a in ADAPTERS)
_HEALTHY = {str(s) for s in HEALTHY_SINK}


# Of TX's heartbeat counters, these go up and down
TX_GAUGES = ("recovery_oldest", "recovery_bytes", "recovery_span_ms")


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
        yield GaugeMetricFamily("diode_missing_frames", "Frames RX missed before it joined "
                                "the stream and still expects from TX's recovery window",
                                value=float(st.get("missing_frames") or 0))
        link = CounterMetricFamily("diode_link", "Link receiver counters", labels=["counter"])
        for k, v in (st.get("link") or {}).items():
            link.add_metric([k], float(v))
        yield link
        sink = CounterMetricFamily("diode_sink", "Per-channel sink counters",
                                   labels=["channel", "protocol", "counter"])
        up = GaugeMetricFamily("diode_sink_connected", "1 when the sink's IT peer is connected "
                               "(or its mirror serving)", labels=["channel", "protocol"])
        spool = GaugeMetricFamily("diode_spool", "RX spool state per channel (fill_bytes, "
                                  "records, oldest_age_s, dropped_*, damaged, ...)",
                                  labels=["channel", "protocol", "field"])
        for protocol, section in _SECTIONS:
            for name, s in (st.get(section) or {}).items():
                up.add_metric([name, protocol], 1.0 if s.get("state") in _HEALTHY else 0.0)
                for k, v in s.items():
                    if isinstance(v, int | float) and not isinstance(v, bool):
                        sink.add_metric([name, protocol, k], float(v))
                for k, v in (s.get("spool") or {}).items():
                    if isinstance(v, int | float) and not isinstance(v, bool):
                        spool.add_metric([name, protocol, k], float(v))
        yield sink
        yield up
        yield spool
        transport = CounterMetricFamily("diode_transport", "Link transport counters (serial: "
                                        "crc_errors, framing_errors, bytes_received)",
                                        labels=["counter"])
        for k, v in (st.get("transport") or {}).items():
            transport.add_metric([k], float(v))
        yield transport
        loop = CounterMetricFamily("diode_rx_loop", "RX's event loop: stalls of 0.5 s or "
                                   "more (loop_stalls), the longest (loop_stall_max_ms)",
                                   labels=["counter"])
        for k, v in (st.get("counters") or {}).items():
            if k.startswith("loop_"):
                loop.add_metric([k], float(v))
        yield loop
        tx_log = st.get("tx_log") or []
        yield GaugeMetricFamily("diode_tx_log_last_time_seconds",
                                "Unix time of TX's latest warning or error (0: none yet)",
                                value=float(tx_log[-1]["time"]) if tx_log else 0.0)
        tx = st.get("tx") or {}
        txc = CounterMetricFamily("diode_tx", "TX counters from its heartbeats",
                                  labels=["counter"])
        window = GaugeMetricFamily("diode_tx_recovery", "TX's recovery window from its "
                                   "heartbeats (oldest seq kept, bytes, span in ms)",
                                   labels=["field"])
        for k, v in (tx.get("counters") or {}).items():
            (window if k in TX_GAUGES else txc).add_metric([_name(k)], float(v))
        yield txc
        yield window
        src = GaugeMetricFamily("diode_tx_source_connected",
                                "1 when TX reports the source connected (0 while the link is "
                                "DOWN: its state is then unknown)", labels=["source"])
        state = GaugeMetricFamily("diode_tx_source_state", "1 for the state TX reports for "
                                  "the source; unknown while the link is DOWN",
                                  labels=["source", "state"])
        for k, v in (tx.get("sources") or {}).items():
            src.add_metric([k], 1.0 if v == "connected" else 0.0)
            state.add_metric([k, str(v)], 1.0)
        yield src
        yield state


def serve(status: Callable[[], dict[str, Any]], host: str, port: int) -> MetricsServer:
    """Listen now (OSError if the address cannot be had) and serve from the running loop."""
    registry = CollectorRegistry()
    registry.register(RxCollector(status))
    server = MetricsServer(registry, host, port)
    server.open()
    return server


_REASONS = {400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error"}


class MetricsServer:
    def __init__(self, registry: CollectorRegistry, host: str, port: int, *,
                 max_connections: int = MAX_CONNECTIONS, timeout: float = TIMEOUT,
                 max_request: int = MAX_REQUEST_BYTES) -> None:
        self.registry, self.host, self.port = registry, host, port
        self.max_connections, self.timeout, self.max_request = max_connections, timeout, max_request
        self.active = 0
        self.counters = {"served": 0, "refused": 0, "timed_out": 0, "bad_requests": 0}
        self.refusals = RefusalLog(log, "metrics")
        self._cache: dict[tuple[str, tuple[str, ...]], tuple[float, str, bytes]] = {}
        self._server: asyncio.AbstractServer | None = None
        self._starting: asyncio.Task[asyncio.AbstractServer] | None = None

    def open(self) -> None:
        """Bind and listen synchronously, so a bad address fails here; then accept in
        the running loop (connections wait in the backlog until it does)."""
        family = socket.getaddrinfo(self.host or None, self.port, type=socket.SOCK_STREAM,
                                    flags=socket.AI_PASSIVE)[0][0]
        sock = socket.create_server((self.host, self.port), family=family, backlog=64)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        # backlog: also how many connections one wake-up accepts (and refuses)
        self._starting = loop.create_task(loop.create_server(lambda: _Connection(self),
                                                             sock=sock, backlog=64))
        self._starting.add_done_callback(self._started)

    def _started(self, task: asyncio.Task[asyncio.AbstractServer]) -> None:
        if not task.cancelled() and task.exception() is None:
            self._server = task.result()

    async def close(self) -> None:
        if self._starting is not None and not self._starting.done():
            await asyncio.gather(self._starting, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.refusals.flush()

    def admit(self) -> bool:
        if self.active >= self.max_connections:
            self.counters["refused"] += 1
            return False
        self.active += 1
        return True

    def answer(self, head: bytes) -> tuple[int, str, bytes, bool]:
        """(status, content type, body, head only) for one request head."""
        try:
            lines = head.decode("latin-1").split("\n")
            method, target, _version = lines[0].strip().split(" ")
        except ValueError:
            return 400, "text/plain", b"bad request\n", False
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"GET or HEAD only\n", False
        url = urlsplit(target)
        if url.path not in ("/metrics", "/"):
            return 404, "text/plain", b"try /metrics\n", method == "HEAD"
        accept = ""
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
        names = tuple(sorted(parse_qs(url.query).get("name[]", [])))
        content_type, body = self._render(accept, names)
        return 200, content_type, body, method == "HEAD"

    def _render(self, accept: str, names: tuple[str, ...]) -> tuple[str, bytes]:
        encoder, content_type = choose_encoder(accept)
        key = (content_type, names)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < CACHE_SECONDS:
            return hit[1], hit[2]
        registry: Collector = self.registry.restricted_registry(names) if names else self.registry
        body = encoder(registry)
        if len(self._cache) >= 8:
            self._cache.clear()
        self._cache[key] = (now, content_type, body)
        return content_type, body


class _Connection(asyncio.Protocol):
    """One scrape: read the request head (bounded), answer, close."""

    def __init__(self, server: MetricsServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.admitted = False
        self.answered = False
        self.timer: asyncio.TimerHandle | None = None
        self.peer: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = transport.get_extra_info("peername")
        if not self.server.admit():
            self.server.refusals.count(f"over the limit of {self.server.max_connections}",
                                       self.peer)
            transport.abort()  # the descriptor goes now, not after a close handshake
            return
        self.admitted = True
        self.timer = asyncio.get_running_loop().call_later(self.server.timeout, self._expired)

    def data_received(self, data: bytes) -> None:
        if self.answered or self.transport is None:
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            end = self.buf.find(b"\n\n")
        if end < 0:
            if len(self.buf) > self.server.max_request:
                self._bad("request too large")
                self._reply(431, "text/plain", b"request too large\n", False)
            return
        if end > self.server.max_request:
            self._bad("request too large")
            self._reply(431, "text/plain", b"request too large\n", False)
            return
        try:
            code, content_type, body, head_only = self.server.answer(bytes(self.buf[:end]))
        except Exception:
            log.exception("metrics: building the answer failed")
            code, content_type, body, head_only = 500, "text/plain", b"internal error\n", False
        if code == 200:
            self.server.counters["served"] += 1
        elif code != 404:
            self._bad("bad request")
        self._reply(code, content_type, body, head_only)

    def eof_received(self) -> bool:
        return False  # a client that half-closes before its request is done: close

    def _bad(self, reason: str) -> None:
        self.server.counters["bad_requests"] += 1
        self.server.refusals.count(reason, self.peer)

    def _reply(self, code: int, content_type: str, body: bytes, head_only: bool) -> None:
        assert self.transport is not None
        self.answered = True
        reason = "OK" if code == 200 else _REASONS.get(code, "Error")
        head = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        self.transport.write(head if head_only else head + body)
        self.transport.close()  # after the answer is written; the timer still bounds that

    def _expired(self) -> None:
        """Still open after `timeout`: no whole request yet, or the answer not taken."""
        self.timer = None
        self.server.counters["timed_out"] += 1
        self.server.refusals.count(f"idle or slow over {self.server.timeout:g} s", self.peer)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.admitted:
            self.admitted = False
            self.server.active -= 1
        self.transport = None
