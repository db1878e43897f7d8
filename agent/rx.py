"""The RX agent (IT side): wiring only.

```
transport ──► RxCore: LinkReceiver ─► records ─► Sink per channel (agent/protocols.py) ──► IT peers
 (udp|serial)        (verify, dedupe, Heartbeat, FramesLost, EpochChanged ─► LinkHealth
                      reorder, gaps)                                            │
 LinkView (link state, TX's sources) ◄──────────────────────────────────────────┘
   ──► every sink (its own health signals), status file, metrics, LEDs
```
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from agent import heap
from agent.adapter import HEALTHY_SINK, LinkView, RxContext, Sink
from agent.board.interface import LinkSetupError, setup_interface
from agent.board.signals import BoardSignals
from agent.config import AgentConfig, LinkConfig
from agent.errors import EXIT_FATAL, ConfigError, SpoolError
from agent.keys import read_key
from agent.link.health import HealthParams, LinkHealth, LinkState
from agent.link.receiver import REJECT_REASONS, LinkReceiver, ReceiverParams
from agent.link.seal import key_fingerprint
from agent.link_state import LinkStateFile
from agent.loop_watch import STALL, LoopStalls, watch
from agent.protocols import ADAPTERS
from agent.runtime import Runtime, write_status_off_loop
from agent.rxcore import RxCore
from agent.spool.channels import ChannelSpools
from agent.transport.base import RxTransport

log = logging.getLogger("diode.rx")


def open_transport(link: LinkConfig) -> RxTransport:
    if link.transport == "serial":
        from agent.transport.serial import SerialRx
        return SerialRx(link.serial_port, link.baudrate)
    from agent.transport.udp import UdpRx
    return UdpRx(link.host, link.port, interface=link.interface)


def largest_record(cfg: AgentConfig) -> int:
    """The largest record RX reassembles: the receiver's default, or more when a
    channel carries larger messages (each adapter says how large its records get)."""
    sizes = [ReceiverParams().max_record]
    for adapter in ADAPTERS:
        if adapter.largest_record is not None:
            sizes += [adapter.largest_record(ch) for ch in cfg.channels.get(adapter.name, ())]
    return max(sizes)


class RxAgent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        link = cfg.link
        self.key = read_key(link.key_file)
        self.link_state = LinkStateFile(link.state_file, link.link_id)
        self.receiver = LinkReceiver(ReceiverParams(link_id=link.link_id,
                                                    reorder_timeout=link.gap_wait,
                                                    epoch_takeover=link.timeout or 3.0,
                                                    max_record=largest_record(cfg)),
                                    self.key, self.link_state.load())
        self.stalls = LoopStalls()
        self.health = LinkHealth(HealthParams(timeout=link.timeout,
                                              degraded_loss=link.degraded_loss))
        self.board = BoardSignals("rx", cfg.board, {"timers": 5.0})
        self.sinks: dict[tuple[str, str], Sink] = {}
        self.core = RxCore(self.receiver, self.health, self.sinks, cfg.path)
        self.spools = ChannelSpools(cfg, self.key)

    def _open_sinks(self, rt: Runtime) -> None:
        ctx = RxContext(fail=rt.fail, open_spool=self.spools, data_dir=self.cfg.spool_dir,
                        keep_raw=self._keep_raw)
        for adapter in ADAPTERS:
            for ch in self.cfg.channels.get(adapter.name, ()):
                self.sinks[(adapter.name, ch.name)] = adapter.sink(ch, ctx)
        self.spools.warn_if_no_room()

    def _keep_raw(self) -> None:
        self.receiver.keep_raw = True

    async def _stop_sinks(self) -> None:
        for sink in self.sinks.values():
            await sink.stop()

    async def run(self) -> int:
        rt = Runtime()
        try:
            self._open_sinks(rt)
        except (ConfigError, SpoolError) as exc:
            log.critical("cannot open the spool: %s", exc)
            await self._stop_sinks()
            return EXIT_FATAL
        transport = open_transport(self.cfg.link)
        self.transport = transport
        try:
            # The link first: a sink may take a second or more to start (a server to
            # bring up), and frames sent meanwhile (a TX starting with us) must not be
            # lost; sinks queue what comes before they serve.
            setup_interface(self.cfg.link, "rx")
            await transport.start(lambda d: self.core.datagram(d, time.monotonic()))
            log.info("RX listening: link id %d, %s, channels %s, key %s",
                     self.cfg.link.link_id, self._where(),
                     ", ".join(s.key for s in self.sinks.values()) or "none",
                     key_fingerprint(self.key))
            heap.settle()  # the imports and the sinks: they live as long as RX
            for sink in self.sinks.values():
                await sink.start()
        except (OSError, LinkSetupError) as exc:
            log.critical("cannot open the link or a sink's endpoint: %s", exc)
            transport.close()
            await self._stop_sinks()
            return EXIT_FATAL
        if self.cfg.metrics is not None:
            from agent.metrics import serve
            host, port = self.cfg.metrics
            try:
                serve(self.status, host, port)
            except OSError as exc:
                log.critical("cannot serve metrics on %s:%d: %s. Fix: check [metrics] listen",
                             host, port, exc)
                transport.close()
                await self._stop_sinks()
                return EXIT_FATAL
            log.info("metrics on http://%s:%d/metrics", host, port)
        self.board.start(link_state=lambda: self.health.state.value)
        self.board.ready(f"RX listening on {self._where()}")
        tasks = [asyncio.create_task(self._timers()), asyncio.create_task(self._status()),
                 asyncio.create_task(watch(self.stalls, log))]
        await rt.stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        transport.close()
        self.link_state.keep(self.receiver, time.monotonic(), final=True)
        await self._report()
        await self._stop_sinks()
        await self.board.close(fatal=rt.fatal is not None)
        if rt.fatal:
            log.critical("RX stopped: %s", rt.fatal)
        else:
            log.info("RX stopped cleanly")
        return rt.exit_code

    def _where(self) -> str:
        link = self.cfg.link
        if link.transport == "serial":
            return f"serial {link.serial_port} @ {link.baudrate}"
        return f"udp {link.host}:{link.port}"

    # -- timers --------------------------------------------------------------------

    async def _timers(self) -> None:
        prev = self.health.state
        prev_sources: object = None
        passes = 0
        awake_since: float | None = None
        last = time.monotonic()
        while True:
            now = time.monotonic()
            if now - last >= STALL:
                awake_since = now  # RX was held up: the link's silence counts from here
            last = now
            self.board.beat("timers")
            for sink in self.sinks.values():
                sink.tick()
            passes += 1
            if passes % 5 == 0:
                self._show(now)
            self.core.timer(now)
            self.link_state.keep(self.receiver, now)
            state = self.health.evaluate(now, self.receiver.last_valid_at, awake_since)
            hb = self.health.last_heartbeat
            sources = hb.sources if hb is not None else None
            if state != prev:
                level = logging.INFO if state == LinkState.UP else logging.WARNING
                log.log(level, "link state %s -> %s%s", prev.value, state.value,
                        self._why(state, now))
                prev = state
                prev_sources = sources
                await self._report()
            elif sources != prev_sources:
                # A TX source changed state (lost its server, connected again): the sinks
                # hear it now, not at the next status interval, so a mirror's values go
                # Uncertain and Good again without that delay.
                prev_sources = sources
                await self._report()
            await asyncio.sleep(0.02)

    def _why(self, state: LinkState, now: float) -> str:
        """What a technician needs to judge a change: how long the link was silent."""
        last = self.receiver.last_valid_at
        if state != LinkState.DOWN or last is None:
            return ""
        return (f": no authenticated frame for {now - last:.1f} s (timeout "
                f"{self.health.timeout:g} s)")

    def _show(self, now: float) -> None:
        c = self.receiver.counters
        dropped = sum(s.dropped() for s in self.sinks.values())
        fault = self.board.fault({"auth_failed": c["auth_failed"],
                                  "unrouted": self.core.counters["unrouted"],
                                  "dropped": dropped}, now, active=self.spools.disk_full())
        connected = sum(s.state in HEALTHY_SINK for s in self.sinks.values())
        self.board.show(self.health.state.value, connected, len(self.sinks), fault)

    async def _status(self) -> None:
        while True:
            await self._report()
            await asyncio.sleep(self.cfg.status_interval)

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        c = self.receiver.counters
        hb = self.health.last_heartbeat
        age = self.health.heartbeat_age(now)
        out: dict[str, Any] = {
            "role": "rx", "time": time.time(), "config": str(self.cfg.path),
            "status_interval": self.cfg.status_interval,
            "key_fingerprint": key_fingerprint(self.key),
            "link_state": self.health.state.value,
            "last_heartbeat_age_s": None if age is None else round(age, 3),
            "datagram_loss": round(self.health.datagram_loss(), 4),
            "epoch": None if self.receiver.epoch is None else f"{self.receiver.epoch:016x}",
            "counters": {"received": c["frames"], "records": c["records"], "lost": c["lost"],
                         "duplicates": c["duplicates"], "late": c["late"],
                         "auth_failures": c["auth_failed"],
                         "rejected": sum(c[r] for r in REJECT_REASONS),
                         "unrouted": self.core.counters["unrouted"],
                         "tx_log": self.core.counters["tx_log"], **self.stalls.counters},
            # the receiver's counters, and the epoch keys it derived (bounded by its budget
            # under any flood of new epoch values: docs/link-replays.md)
            "link": {**c, "keys_derived": self.receiver.keys_derived},
            # frames RX missed before it joined and still hopes to get (recovery window)
            "missing_frames": self.receiver.missing,
            "transport": self._transport_counters(),
            "tx": None if hb is None else self._tx_view(hb.sources, hb.counters, age),
            "tx_log": list(self.core.tx_log),  # TX's latest warnings and errors, oldest first
            "board": self.board.describe(),
        }
        for adapter in ADAPTERS:
            out.setdefault(adapter.status_section, {}).update(
                {channel: sink.status() for (proto, channel), sink in self.sinks.items()
                 if proto == adapter.name})
        return out

    def _tx_view(self, sources: dict[str, str], counters: dict[str, int],
                 age: float | None) -> dict[str, Any]:
        """TX's sources as its last heartbeat had them; while the link is DOWN that is
        old news, so each is "unknown", with the last known state and its age."""
        view: dict[str, Any] = {"sources": sources, "counters": counters,
                                "heartbeat_age_s": None if age is None else round(age, 3)}
        if self.health.state == LinkState.DOWN:
            view["sources"] = dict.fromkeys(sources, "unknown")
            view["last_known_sources"] = sources
        return view

    def _transport_counters(self) -> dict[str, int]:
        """The transport's own counters (serial: framing and CRC errors, bytes read)."""
        counters = getattr(getattr(self, "transport", None), "counters", None)
        return dict(counters()) if callable(counters) else {}

    async def _report(self) -> None:
        """Link and TX source health to every sink, and the status file."""
        status = self.status()
        hb = self.health.last_heartbeat
        view = LinkView(state=self.health.state.value,
                        heartbeat_age=self.health.heartbeat_age(time.monotonic()),
                        tx_sources=status["tx"]["sources"] if hb else {},
                        tx_counters=hb.counters if hb else None, status=status)
        for sink in self.sinks.values():
            await sink.on_link(view)
        await write_status_off_loop(self.cfg.status_file, status)
