"""The TX agent (OT side): wiring only. It listens only where a channel's config names a
listener (on an OT-side address, nothing by default); the link holds no listening socket.

```
plant peers ─► Source per channel ─┐ (agent/protocols.py; each with its own queue)
TX's own log ─► TxLogSource ───────┤ (agent/txlog.py: WARNING and up, rate-limited)
heartbeat timer ─► Heartbeat ──────┼─► TxCore ─► TokenBucket ─► transport ══► one-way link
CarouselScheduler ─► re-sends ─────┘   (LinkSender:  (bit rate)   (udp | serial)
 (each within its share of the link)    pack, seal,     ▲
                                        repeat)         │ spare room only, within
                            └─► RecoveryWindow ─────────┘ recovery_share (agent/link/recovery.py)
```
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

from agent import heap
from agent.adapter import Source, SourceState, TxContext
from agent.board.interface import LinkSetupError, TxInterfaceKeeper, setup_interface
from agent.board.signals import BoardSignals
from agent.carousel import CarouselScheduler
from agent.config import AgentConfig, LinkConfig
from agent.errors import EXIT_FATAL, ConfigError, SpoolError
from agent.keys import read_key
from agent.link import records
from agent.link.pacer import TokenBucket
from agent.link.recovery import RecoveryParams, RecoveryWindow
from agent.link.seal import key_fingerprint
from agent.link.sender import LinkSender, SenderParams
from agent.loop_watch import LoopStalls, watch
from agent.protocols import ADAPTERS
from agent.runtime import Runtime, write_status, write_status_off_loop
from agent.spool.channels import ChannelSpools
from agent.transport.base import TxTransport
from agent.txcore import TxCore
from agent.txlog import TxLogHandler, TxLogSource

log = logging.getLogger("diode.tx")

# Seconds of link time taken from the sources per pump pass: a backlog waits in the
# sources' queues (where message expiry counts down), not in the sender's output.
HORIZON = 0.05


def new_epoch() -> int:
    """Start time in milliseconds in the high 42 bits, 22 random bits below.

    A later start compares greater (RX follows a greater epoch at once, and
    takes a lower one for a replay until the link has been quiet), even a
    restart within the same second. Two starts share an epoch, and so a key
    and nonces, only in the same millisecond with the same 22 random bits.
    """
    return (time.time_ns() // 1_000_000 & (1 << 42) - 1) << 22 | secrets.randbits(22)


def open_transport(link: LinkConfig) -> tuple[TxTransport, float]:
    """The transport and the bit rate TX must keep under."""
    transport: TxTransport
    if link.transport == "serial":
        from agent.transport.serial import SerialTx
        serial_tx = SerialTx(link.serial_port, link.baudrate)
        # 8N1: ten bits on the line per byte; the pacer counts bytes * 8.
        transport, rate = serial_tx, link.baudrate * 8 / serial_tx.bits_per_byte
    else:
        transport, rate = _open_udp(link), link.bitrate
    if link.loss > 0:
        from agent.transport.lossy import LossyChannel, LossyTx
        log.warning("simulated loss of %.1f %% is ON ([link] simulated_loss)", link.loss * 100)
        transport = LossyTx(transport, LossyChannel(link.loss_seed, loss=link.loss))
    return transport, float(rate)


def _open_udp(link: LinkConfig) -> TxTransport:
    """A send-only raw socket when permitted, so TX holds no bound port at all."""
    from agent.transport.udp import UdpTx
    from agent.transport.udp_raw import RawUdpTx
    if link.raw_socket is not False:
        try:
            return RawUdpTx(link.host, link.port, link.source, link.interface,
                            broadcast=link.broadcast)
        except PermissionError:
            if link.raw_socket:
                raise
            log.warning("no permission for a raw socket (CAP_NET_RAW): sending from an "
                        "ordinary UDP socket, which binds an ephemeral port on TX. Fix: give "
                        "TX CAP_NET_RAW, or set [link] raw_socket = false to accept this")
    return UdpTx(link.host, link.port, source=link.source, interface=link.interface,
                 broadcast=link.broadcast)


def warn_orphaned_spools(cfg: AgentConfig, opened: set[str]) -> None:
    """Spool folders no source opened (channels no longer configured): their messages
    will not be sent."""
    if cfg.spool is None or not cfg.spool.dir.is_dir():
        return
    for d in sorted(cfg.spool.dir.iterdir()):
        if d.is_dir() and d.name not in opened and any(d.glob("*.seg")):
            log.warning("spool folder %s belongs to no channel in %s; what it holds is not "
                        "sent. Fix: restore the channel, or remove the folder", d, cfg.path)


class TxAgent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        link = cfg.link
        self.key = read_key(link.key_file)
        self.epoch = new_epoch()
        self.recovery = (RecoveryWindow(RecoveryParams(link.recovery_window,
                                                       link.recovery_max_bytes))
                         if link.recovery_window > 0 and link.recovery_max_bytes > 0 else None)
        self.sender = LinkSender(SenderParams(link_id=link.link_id, mtu=link.mtu,
                                              repeat=link.repeat, interleave=link.interleave,
                                              linger=link.linger), self.key, self.epoch,
                                 self.recovery)
        self.counters = {"send_errors": 0}
        self.stalls = LoopStalls()
        self.board = BoardSignals("tx", cfg.board,
                                  {"send": max(5.0, 3 * link.heartbeat_interval)})
        self._wake = asyncio.Event()
        self.sources: list[Source] = []
        self.keeper = TxInterfaceKeeper(link)
        self.log_handler = TxLogHandler()
        self.log_source = TxLogSource(self.log_handler)
        self.spools = ChannelSpools(cfg, self.key)

    def _open_sources(self, rt: Runtime) -> None:
        ctx = TxContext(wake=self._wake.set, fail=rt.fail, open_spool=self.spools,
                        data_dir=self.cfg.spool_dir)
        for adapter in ADAPTERS:
            for ch in self.cfg.channels.get(adapter.name, ()):
                self.sources.append(adapter.source(ch, ctx))
        self.spools.warn_if_no_room()

    async def run(self) -> int:
        rt = Runtime()
        link = self.cfg.link
        try:
            setup_interface(link, "tx")
            transport, rate = open_transport(link)
        except (OSError, ValueError, LinkSetupError) as exc:
            log.critical("cannot open the link: %s", exc)
            return EXIT_FATAL
        self.bucket = TokenBucket(rate, max(link.mtu * 8, int(rate / 8 * 0.01)), time.monotonic())
        share = rate * link.recovery_share
        self.resend_bucket = TokenBucket(share, max(link.mtu * 2, int(share / 8 * 0.01)),
                                         time.monotonic())
        self.log_handler.wake, self.log_handler.loop = self._wake.set, asyncio.get_running_loop()
        logging.getLogger().addHandler(self.log_handler)
        try:
            self._open_sources(rt)
        except (ConfigError, SpoolError) as exc:
            log.critical("cannot open the spool: %s", exc)
            for src in self.sources:
                src.close()
            transport.close()
            return EXIT_FATAL
        warn_orphaned_spools(self.cfg, set(self.spools.opened))
        heap.settle()  # the imports and the sources: they live as long as TX
        # TX's own log goes beside the channels, last in each pass (agent/txlog.py)
        self.core = TxCore(self.sender, [*self.sources, self.log_source],
                           CarouselScheduler(rate, link.mtu * 4), time.monotonic())
        log.info("TX starting: epoch %016x, link id %d, %s, repeat %d, interleave %d, "
                 "channels %s, key %s", self.epoch, link.link_id,
                 f"udp {link.host}:{link.port}" if link.transport == "udp" else
                 f"serial {link.serial_port} @ {link.baudrate}", link.repeat, link.interleave,
                 ", ".join(s.key for s in self.sources) or "none", key_fingerprint(self.key))
        for src in self.sources:
            await src.start()
        self.board.start()
        tasks = [asyncio.create_task(self._pump(transport)),
                 asyncio.create_task(self.keeper.run()),
                 asyncio.create_task(self._heartbeats()),
                 asyncio.create_task(self._status()),
                 asyncio.create_task(self._leds()),
                 asyncio.create_task(self._sync()),
                 asyncio.create_task(watch(self.stalls, log))]
        self.board.ready(f"TX epoch {self.epoch:016x}")
        await rt.stop.wait()
        for src in self.sources:
            await src.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        now = time.monotonic()
        if rt.fatal:
            log.critical("TX stopped: %s", rt.fatal)  # before the last frames: IT sees why
        for data, _tag in self.log_source.take(time.time(), 1000):
            if data is not None:
                self.sender.push(data, now)
        self._push_heartbeat(now)
        if all([self._send(transport, d) for d in self.core.drain(now)]):
            self.core.sent()  # else what was not sent stays in the spool for the next start
        write_status(self.cfg.status_file, self._status_doc())
        for src in self.sources:
            src.close()
        transport.close()
        await self.board.close(fatal=rt.fatal is not None)
        logging.getLogger().removeHandler(self.log_handler)
        if not rt.fatal:
            log.info("TX stopped cleanly")
        return rt.exit_code

    # -- tasks -------------------------------------------------------------------

    async def _pump(self, transport: TxTransport) -> None:
        core = self.core
        overhead = transport.overhead_bytes
        # record bytes the link carries in HORIZON, with every frame sent `repeat` times
        budget = max(self.cfg.link.mtu, int(self.bucket.rate * HORIZON / self.cfg.link.repeat))
        backoff = 0.0
        while True:
            self._wake.clear()
            more = core.poll(time.monotonic(), time.time(), budget=budget)
            ok = True
            for d in core.datagrams():
                cost = len(d) + overhead
                delay = self.bucket.delay(cost, time.monotonic())
                if delay > 0:
                    await asyncio.sleep(delay)
                self.bucket.take(cost, time.monotonic())
                ok = self._send(transport, d) and ok
            if ok:
                core.sent()
                backoff = 0.0
            else:
                # Nothing of this batch is released: a spooled record leaves the spool only
                # once a datagram carrying it went out. Retry after a pause that grows, while
                # the interface keeper puts the link's set-up back.
                core.failed()
                self.keeper.poke()
                backoff = min(2.0, max(0.05, backoff * 2))
                await asyncio.sleep(backoff)
                continue
            self._log_overruns()
            if more:
                await asyncio.sleep(0)
                continue
            now = time.monotonic()
            times = [t for t in (core.next_deadline(now), self._resend(transport, now))
                     if t is not None]
            timeout = max(0.0, min(times) - now) if times else None
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    def _resend(self, transport: TxTransport, now: float) -> float | None:
        """The recovery window's copies that are due, while the link has room now and
        within their share; when to come back for more (None: nothing is kept)."""
        window = self.recovery
        if window is None:
            return None
        overhead = transport.overhead_bytes
        room = min(self.bucket.room(now), self.resend_bucket.room(now))
        for d in self.sender.resend(now, int(room), overhead):
            cost = len(d) + overhead
            self.bucket.take(cost, now)
            self.resend_bucket.take(cost, now)
            self._send(transport, d)  # a failed re-send is counted and not retried
        due = window.next_due(now)
        if due is None:
            return None
        one = self.cfg.link.mtu + overhead
        return max(due, now + max(self.bucket.delay(one, now), self.resend_bucket.delay(one, now)))

    def _log_overruns(self) -> None:
        overruns = self.core.carousels.overruns
        while overruns:
            o = overruns.pop()
            log.warning("%s: carousel '%s' of %d records took %.1f s, longer than its period; "
                        "raise its carousel_share or its period", o.owner, o.carousel,
                        o.records, o.took)

    def _send(self, transport: TxTransport, datagram: bytes) -> bool:
        """One datagram on the wire. The watchdog is petted only for sends that worked, so
        a link that stays broken ends in a restart by systemd."""
        try:
            transport.send(datagram)
        except OSError as exc:
            n = self.counters["send_errors"] = self.counters["send_errors"] + 1
            if n in (1, 10, 100) or n % 10000 == 0:
                log.error("link send failed (%d so far): %s", n, exc)
            return False
        self.board.beat("send")
        return True

    def _source_states(self) -> dict[str, str]:
        return {s.key: str(s.state) for s in self.sources}

    def _push_heartbeat(self, now: float) -> None:
        link = self.cfg.link
        self.core.heartbeat(lambda: records.encode(records.Heartbeat(
            time.time(), link.heartbeat_interval, link.repeat, self._counters(),
            self._source_states())), now)

    async def _heartbeats(self) -> None:
        while True:
            self._push_heartbeat(time.monotonic())
            self._wake.set()
            await asyncio.sleep(self.cfg.link.heartbeat_interval)

    async def _status(self) -> None:
        while True:
            await write_status_off_loop(self.cfg.status_file, self._status_doc())
            await asyncio.sleep(self.cfg.status_interval)

    async def _sync(self) -> None:
        """Batched fsync of the spools, and the OT acknowledgements it releases."""
        interval = (self.cfg.spool.fsync_interval_ms / 1000 if self.cfg.spool else 1.0) or 0.01
        while True:
            for src in self.sources:
                src.tick()
            await asyncio.sleep(interval)

    async def _leds(self) -> None:
        sent = -1
        while True:
            now = time.monotonic()
            dropped = sum(s.dropped() for s in self.sources)
            fault = self.board.fault({"send_errors": self.counters["send_errors"],
                                      "dropped": dropped}, now, active=self.spools.disk_full())
            states = self._source_states().values()
            connected = sum(s == SourceState.CONNECTED for s in states)
            datagrams = self.sender.counters["datagrams"]
            self.board.show(None, connected, len(states), fault, sending=datagrams != sent)
            sent = datagrams
            await asyncio.sleep(0.1)

    # -- reporting ---------------------------------------------------------------

    def _counters(self) -> dict[str, int]:
        out = dict(self.sender.counters)
        out.update(self.counters)
        out.update(self.stalls.counters)
        out["interface_restored"] = self.keeper.restored
        if self.recovery is not None:
            # `recovery_oldest`: RX gives up a frame it misses once it is older than this
            now = time.monotonic()
            out.update(self.recovery.counters)
            out["recovery_oldest"] = self.recovery.oldest(now, self.sender.next_seq)
            out["recovery_bytes"] = self.recovery.bytes
            out["recovery_span_ms"] = int(self.recovery.span(now) * 1000)
        for src in self.sources:
            for k, v in src.counters.items():
                out[f"{src.key}.{k}"] = v
        for k, v in self.log_source.counters.items():
            out[f"log.{k}"] = v
        return out

    def _status_doc(self) -> dict[str, Any]:
        queues = {s.key: s.stats() for s in self.sources}
        status: dict[str, Any] = {
            "role": "tx", "time": time.time(), "config": str(self.cfg.path),
            "status_interval": self.cfg.status_interval,
            "epoch": f"{self.epoch:016x}", "key_fingerprint": key_fingerprint(self.key),
            "counters": self._counters(),
            "sources": self._source_states(),
            "queue": {"queued": sum(q.get("queued", 0) for q in queues.values())},
            "queues": queues,
            "board": self.board.describe(),
        }
        return status
