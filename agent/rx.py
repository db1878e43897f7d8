"""The RX agent (IT side): wiring only.

```
transport ──► LinkReceiver ──► RecordReceived(MqttMessage) ──► MqttSink[channel] ──► IT brokers
 (udp|serial)  (verify, dedupe,  RecordReceived(Heartbeat) ──┐
               reorder, gaps)    FramesLost, EpochChanged ───┴► LinkHealth ──► status topic, status file, log
```
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.board.interface import LinkSetupError, setup_interface
from agent.board.signals import BoardSignals
from agent.config import AgentConfig, ConfigError, LinkConfig, RxMqttChannel
from agent.keys import read_key
from agent.link import records
from agent.link.events import EpochChanged, Event, FramesLost, RecordReceived
from agent.link.health import HealthParams, LinkHealth, LinkState
from agent.link.receiver import REJECT_REASONS, LinkReceiver, ReceiverParams
from agent.link.seal import key_fingerprint
from agent.mqtt.sink import MqttSink
from agent.mqtt.sink_spooled import SpooledMqttSink
from agent.runtime import Runtime, write_status
from agent.spool import Spool, SpoolError, load_spool_key
from agent.transport.base import RxTransport

if TYPE_CHECKING:
    from agent.opcua.mirror import OpcuaMirror

log = logging.getLogger("diode.rx")


def open_transport(link: LinkConfig) -> RxTransport:
    if link.transport == "serial":
        from agent.transport.serial import SerialRx
        return SerialRx(link.serial_port, link.baudrate)
    from agent.transport.udp import UdpRx
    return UdpRx(link.host, link.port, interface=link.interface)


class RxAgent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        link = cfg.link
        self.key = read_key(link.key_file)
        self.receiver = LinkReceiver(ReceiverParams(link_id=link.link_id,
                                                    reorder_timeout=link.reorder_timeout,
                                                    epoch_takeover=link.timeout or 3.0),
                                    self.key)
        self.health = LinkHealth(HealthParams(timeout=link.timeout,
                                              degraded_loss=link.degraded_loss))
        self.counters = {"unrouted": 0}
        self.board = BoardSignals("rx", cfg.board, {"timers": 5.0})
        self._epoch_datagrams = 0
        self._unrouted_logged: set[str] = set()
        self._lost_unlogged = 0
        self._lost_logged_at = -1.0

    async def run(self) -> int:
        rt = Runtime()
        try:
            self.sinks = {ch.name: self._sink(ch, rt.fail) for ch in self.cfg.rx_mqtt}
        except (ConfigError, SpoolError) as exc:
            log.critical("cannot open the spool: %s", exc)
            return 2
        for sink in self.sinks.values():
            sink.start()
        self.mirrors: dict[str, OpcuaMirror] = {}
        if self.cfg.rx_opcua:
            from agent.opcua.mirror import OpcuaMirror as Mirror  # asyncua only when used
            self.mirrors = {c.name: Mirror(c) for c in self.cfg.rx_opcua}
        transport = open_transport(self.cfg.link)
        try:
            # The link first: a mirror takes a second or more to start, and frames
            # sent meanwhile (a TX starting with us, its first model) must not be
            # lost; the mirrors queue what comes before they serve.
            setup_interface(self.cfg.link, "rx")
            await transport.start(self._on_datagram)
            log.info("RX listening: link id %d, %s, %d MQTT channel(s), key %s",
                     self.cfg.link.link_id, self._where(), len(self.sinks),
                     key_fingerprint(self.key))
            for mirror in self.mirrors.values():
                await mirror.start()
        except (OSError, LinkSetupError) as exc:
            log.critical("cannot open the link or an OPC UA mirror endpoint: %s", exc)
            transport.close()
            for mirror in self.mirrors.values():
                await mirror.stop()
            for sink in self.sinks.values():
                await sink.stop()
            return 2
        if self.cfg.metrics is not None:
            from agent.metrics import serve
            host, port = self.cfg.metrics
            try:
                serve(self.status, host, port)
            except OSError as exc:
                log.critical("cannot serve metrics on %s:%d: %s. Fix: check [metrics] listen",
                             host, port, exc)
                transport.close()
                for sink in self.sinks.values():
                    await sink.stop()
                return 2
            log.info("metrics on http://%s:%d/metrics", host, port)
        self.board.start(link_state=lambda: self.health.state.value)
        self.board.ready(f"RX listening on {self._where()}")
        tasks = [asyncio.create_task(self._timers()), asyncio.create_task(self._status())]
        await rt.stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        transport.close()
        self._report()
        for sink in self.sinks.values():
            await sink.stop()
        for mirror in self.mirrors.values():
            await mirror.stop()
        await self.board.close(fatal=rt.fatal is not None)
        if rt.fatal:
            log.critical("RX stopped: %s", rt.fatal)
        else:
            log.info("RX stopped cleanly")
        return rt.exit_code

    def _sink(self, ch: RxMqttChannel, fail: Callable[[str], None]) -> MqttSink:
        """With [spool], each channel spools into its own folder, so a broker that is
        down holds back only its own channel."""
        s = self.cfg.spool
        if s is None:
            return MqttSink(ch, fail)
        spool = Spool(s.dir / ch.name, load_spool_key(s.key), max_bytes=s.max_bytes,
                      fsync=s.fsync,  # type: ignore[arg-type]
                      fsync_interval_ms=s.fsync_interval_ms)
        return SpooledMqttSink(ch, fail, spool)

    def _where(self) -> str:
        link = self.cfg.link
        if link.transport == "serial":
            return f"serial {link.serial_port} @ {link.baudrate}"
        return f"udp {link.host}:{link.port}"

    # -- link input ----------------------------------------------------------------

    def _on_datagram(self, datagram: bytes) -> None:
        now = time.monotonic()
        self._handle(self.receiver.receive(datagram, now), now)

    def _handle(self, events: list[Event], now: float) -> None:
        sinks = self.sinks
        for ev in events:
            if isinstance(ev, RecordReceived):
                rec = ev.record
                if isinstance(rec, records.MqttMessage):
                    sink = sinks.get(rec.channel)
                    if sink is not None:
                        sink.publish(rec, now)
                    else:
                        self._unrouted(rec.channel)
                elif isinstance(rec, records.OpcuaModel | records.OpcuaValues):
                    mirror = self.mirrors.get(rec.source)
                    if mirror is not None:
                        mirror.submit(rec)
                    else:
                        self._unrouted(rec.source)
                elif isinstance(rec, records.Heartbeat):
                    valid = self.receiver.counters["valid"] + self.receiver.counters["duplicates"]
                    self.health.on_heartbeat(rec, valid - self._epoch_datagrams, now)
            elif isinstance(ev, FramesLost):
                self.health.on_lost(now)
                self._lost_unlogged += ev.count
                if now - self._lost_logged_at >= 1.0:
                    log.warning("link: %d frame(s) lost since the last report (epoch %016x, "
                                "latest from seq %d); %d lost in all", self._lost_unlogged,
                                ev.epoch, ev.first_seq, self.receiver.counters["lost"])
                    self._lost_unlogged, self._lost_logged_at = 0, now
            elif isinstance(ev, EpochChanged):
                c = self.receiver.counters
                self._epoch_datagrams = c["valid"] + c["duplicates"] - 1
                self.health.on_epoch()
                if ev.old is None:
                    log.info("link: receiving epoch %016x", ev.new)
                else:
                    log.warning("link: TX restarted (epoch %016x -> %016x); following it",
                                ev.old, ev.new)

    def _unrouted(self, channel: str) -> None:
        self.counters["unrouted"] += 1
        if channel not in self._unrouted_logged:
            self._unrouted_logged.add(channel)
            log.error("link: records for channel '%s' have no [[mqtt]] channel of that name "
                      "here; they are dropped and counted. Fix: add [[mqtt]] name = \"%s\" to "
                      "%s", channel, channel, self.cfg.path)

    # -- timers --------------------------------------------------------------------

    async def _timers(self) -> None:
        prev = self.health.state
        passes = 0
        while True:
            now = time.monotonic()
            self.board.beat("timers")
            for sink in self.sinks.values():
                sink.tick()
            passes += 1
            if passes % 5 == 0:
                self._show(now)
            deadline = self.receiver.next_deadline()
            if deadline is not None and deadline <= now:
                self._handle(self.receiver.handle_timer(now), now)
            state = self.health.evaluate(now, self.receiver.last_valid_at)
            if state != prev:
                level = logging.INFO if state == LinkState.UP else logging.WARNING
                log.log(level, "link state %s -> %s", prev.value, state.value)
                prev = state
                self._report()
                await self._tell_mirrors(now)
            await asyncio.sleep(0.02)

    def _show(self, now: float) -> None:
        c = self.receiver.counters
        dropped = sum(s.counters["queue_dropped"] for s in self.sinks.values())
        fault = self.board.fault({"auth_failed": c["auth_failed"],
                                  "unrouted": self.counters["unrouted"], "dropped": dropped}, now)
        connected = sum(s.state == "connected" for s in self.sinks.values())
        self.board.show(self.health.state.value, connected, len(self.sinks), fault)

    async def _tell_mirrors(self, now: float) -> None:
        """Link and source health into the mirrors' status codes and diagnostics."""
        hb = self.health.last_heartbeat
        for name, mirror in self.mirrors.items():
            await mirror.set_link_state(
                self.health.state.value,
                source_state=hb.sources.get(f"opcua:{name}") if hb else None,
                heartbeat_age=self.health.heartbeat_age(now),
                counters=hb.counters if hb else None)

    async def _status(self) -> None:
        while True:
            await self._tell_mirrors(time.monotonic())
            self._report()
            await asyncio.sleep(self.cfg.status_interval)

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        c = self.receiver.counters
        hb = self.health.last_heartbeat
        age = self.health.heartbeat_age(now)
        return {
            "role": "rx", "time": time.time(), "config": str(self.cfg.path),
            "key_fingerprint": key_fingerprint(self.key),
            "link_state": self.health.state.value,
            "last_heartbeat_age_s": None if age is None else round(age, 3),
            "datagram_loss": round(self.health.datagram_loss(), 4),
            "epoch": None if self.receiver.epoch is None else f"{self.receiver.epoch:016x}",
            "counters": {"received": c["frames"], "records": c["records"], "lost": c["lost"],
                         "duplicates": c["duplicates"], "late": c["late"],
                         "auth_failures": c["auth_failed"],
                         "rejected": sum(c[r] for r in REJECT_REASONS),
                         "unrouted": self.counters["unrouted"]},
            "link": dict(c),
            "tx": None if hb is None else {"sources": hb.sources, "counters": hb.counters},
            "sinks": {name: {"state": s.state, **s.counters, **s.conn.counters,
                             "spool": s.stats()} for name, s in self.sinks.items()},
            "opcua": {name: {"state": m.state, **m.all_counters()}
                      for name, m in getattr(self, "mirrors", {}).items()},
            "board": self.board.describe(),
        }

    def _report(self) -> None:
        status = self.status()
        for name, sink in self.sinks.items():
            sink.publish_status({**status, "channel": name})
        write_status(self.cfg.status_file, status)
