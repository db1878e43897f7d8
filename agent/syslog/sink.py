"""RX side: one syslog channel, forwarded to each of its IT collectors.

```
link ─► submit(record) ─► relay header (relay.py) ─► payload ─┬─► UdpCollector ─► datagram
                                                              ├─► StreamCollector ─► TCP
                                                              └─► StreamCollector ─► TLS
                                           (each: backlog in memory or its own spool)
```

Every collector gets every message; each holds its own backlog, so one that is
away holds back only itself. With a `[spool]`, each TCP or TLS collector
spools into a folder of its own under `[spool] dir`.
"""

from __future__ import annotations

import logging
import re
from typing import Any, cast

from agent.adapter import Arrival, LinkView, RxContext, SinkState
from agent.link.records import Record
from agent.syslog import relay
from agent.syslog.backlog import MemoryBacklog, SpoolBacklog
from agent.syslog.codec import SyslogMessage
from agent.syslog.collectors import StreamCollector, UdpCollector, client_tls
from agent.syslog.config import Endpoint, RxSyslogChannel

log = logging.getLogger("diode.sink.syslog")


def spool_name(channel: str, ep: Endpoint) -> str:
    """The spool folder of one collector of a channel (never a channel's own name)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{channel}.syslog.{ep.transport}-{ep.host}-{ep.port}")


class SyslogSink:
    def __init__(self, ch: RxSyslogChannel, ctx: RxContext) -> None:
        self.ch = ch
        self.key = f"syslog:{ch.name}"
        self._wrap = relay.wrapper(ch.relay_header, ch.relay)
        tls = None
        if any(ep.transport == "tls" for ep in ch.collectors):
            tls = client_tls(ch)
            if not ch.tls_verify:
                log.warning(
                    "syslog channel '%s': tls_verify = false: the TLS collectors' certificates "
                    "and names are NOT checked", ch.name)
        self.collectors: list[UdpCollector | StreamCollector] = []
        for ep in ch.collectors:
            what = f"syslog collector '{ch.name}' ({ep.label})"
            if ep.transport == "udp":
                self.collectors.append(UdpCollector(ep, what))
                continue
            spool = ctx.open_spool(spool_name(ch.name, ep))
            backlog = (MemoryBacklog(ch.queue_limit, ch.queue_bytes) if spool is None
                       else SpoolBacklog(spool))
            self.collectors.append(StreamCollector(ep, what, ch, backlog,
                                                   tls if ep.transport == "tls" else None,
                                                   ctx.fail))
        self.counters = {"received": 0, "truncated": 0}
        self._pushes = [c.push for c in self.collectors]
        self._started = False

    @property
    def state(self) -> SinkState:
        if not self._started:
            return SinkState.STOPPED
        states = [c.state for c in self.collectors]
        for s in (SinkState.REFUSED, SinkState.DISCONNECTED, SinkState.CONNECTING):
            if s in states:
                return s
        return SinkState.CONNECTED

    async def start(self) -> None:
        self._started = True
        for c in self.collectors:
            await c.start()

    async def stop(self) -> None:
        for c in self.collectors:
            await c.stop()
        self._started = False

    def submit(self, record: Record, now: float, arrival: Arrival = Arrival.LIVE,
               raw: bytes | None = None) -> None:
        """One message from the link: wrapped once, handed to every collector (late ones
        too: each carries its own timestamp)."""
        msg = cast(SyslogMessage, record)  # the registry routes only these here
        payload = self._wrap(msg)
        counters = self.counters
        counters["received"] += 1
        if msg.truncated:
            counters["truncated"] += 1
        for push in self._pushes:
            push(payload)

    def tick(self) -> None:
        for c in self.collectors:
            c.tick()

    def dropped(self) -> int:
        return sum(c.dropped() for c in self.collectors)

    def status(self) -> dict[str, Any]:
        each = {c.ep.label: c.status() for c in self.collectors}
        return {"state": self.state, **self.counters,
                "forwarded": sum(s["forwarded"] for s in each.values()),
                "held": sum(s["held"] for s in each.values()),
                "dropped": self.dropped(),
                "outages": sum(s.get("outages", 0) for s in each.values()),
                "collectors": each}

    async def on_link(self, link: LinkView) -> None:
        pass  # a collector has no place for the link's state; TX's log and status do
