"""The TX agent (OT side): wiring only. It opens no listening socket.

```
OT brokers ──► MqttSource (paho in the loop, bounded queue) ┐
heartbeat timer ──► Heartbeat (counters, source states) ─┼─► LinkSender ─► TokenBucket ─► transport ══►
carousel timers ──► retained snapshot (share of rate) ───┘   (pack, seal,  (bit rate)    (udp | serial)
                                                               repeat)
```
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

from agent.board.interface import LinkSetupError, setup_interface
from agent.board.signals import BoardSignals
from agent.config import AgentConfig, ConfigError, LinkConfig
from agent.keys import read_key
from agent.link import records
from agent.link.pacer import TokenBucket
from agent.link.seal import key_fingerprint
from agent.link.sender import LinkSender, SenderParams
from agent.mqtt.source import MqttSource
from agent.queues import Entry, MemoryQueue, SpoolQueue
from agent.runtime import EXIT_FATAL, Runtime, write_status
from agent.spool import Spool, SpoolError, load_spool_key
from agent.transport.base import TxTransport

if TYPE_CHECKING:
    from agent.opcua.source import OpcuaSource

log = logging.getLogger("diode.tx")


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


def open_queue(cfg: AgentConfig) -> MemoryQueue | SpoolQueue:
    """The encrypted spool when [spool] is configured, else a bounded memory queue."""
    if cfg.spool is None:
        return MemoryQueue(sum(ch.queue_limit for ch in cfg.tx_mqtt) or 1)
    s = cfg.spool
    spool = Spool(s.dir, load_spool_key(s.key), max_bytes=s.max_bytes,
                  fsync=s.fsync,  # type: ignore[arg-type]
                  fsync_interval_ms=s.fsync_interval_ms)
    conflating = {ch.name for ch in cfg.tx_mqtt if ch.overflow == "conflate"}

    def conflate(e: Entry) -> str | None:
        # retained topics are state: when the spool is full, keep only their latest
        return f"{e[0]}\0{e[1]}" if e[4] or e[0] in conflating else None
    return SpoolQueue(spool, conflate)


class TxAgent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        link = cfg.link
        self.key = read_key(link.key_file)
        self.epoch = new_epoch()
        self.sender = LinkSender(SenderParams(link_id=link.link_id, mtu=link.mtu,
                                              repeat=link.repeat, interleave=link.interleave,
                                              linger=link.linger), self.key, self.epoch)
        self.counters = {"send_errors": 0}
        self.board = BoardSignals("tx", cfg.board,
                                  {"send": max(5.0, 3 * link.heartbeat_interval)})
        self._wake = asyncio.Event()

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
        try:
            self.queue = open_queue(self.cfg)
        except (ConfigError, SpoolError) as exc:
            log.critical("cannot open the spool: %s", exc)
            transport.close()
            return EXIT_FATAL
        self.sources = [MqttSource(ch, self.queue, self._wake.set, rt.fail)
                        for ch in self.cfg.tx_mqtt]
        self._by_channel = {src.ch.name: src for src in self.sources}
        self.opcua: list[OpcuaSource] = []
        if self.cfg.tx_opcua:
            from agent.opcua.source import OpcuaSource as Source  # asyncua only when used
            self.opcua = [Source(c, self._wake.set, rt.fail) for c in self.cfg.tx_opcua]
        log.info("TX starting: epoch %016x, link id %d, %s, repeat %d, interleave %d, "
                 "%d MQTT channel(s), key %s", self.epoch, link.link_id,
                 f"udp {link.host}:{link.port}" if link.transport == "udp" else
                 f"serial {link.serial_port} @ {link.baudrate}", link.repeat, link.interleave,
                 len(self.sources), key_fingerprint(self.key))
        for src in self.sources:
            src.start()
        for ua_src in self.opcua:
            await ua_src.start()
        self.board.start()
        tasks = [asyncio.create_task(self._pump(transport)),
                 asyncio.create_task(self._heartbeats()),
                 asyncio.create_task(self._status()),
                 asyncio.create_task(self._leds()),
                 asyncio.create_task(self._sync())]
        self.board.ready(f"TX epoch {self.epoch:016x}")
        tasks += [asyncio.create_task(self._carousel(src, rate)) for src in self.sources]
        tasks += [asyncio.create_task(s.run_carousel(self._push_now, rate * 0.1))
                  for s in self.opcua]
        await rt.stop.wait()
        for src in self.sources:
            await src.stop()
        for ua_src in self.opcua:
            await ua_src.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        now = time.monotonic()
        self._push_heartbeat(now)
        for d in self.sender.drain(now):
            self._send(transport, d)
        self.queue.framed(self.sender.pop_framed())
        self._write_status()
        self.queue.close()
        transport.close()
        await self.board.close(fatal=rt.fatal is not None)
        if rt.fatal:
            log.critical("TX stopped: %s", rt.fatal)
        else:
            log.info("TX stopped cleanly")
        return rt.exit_code

    # -- tasks -------------------------------------------------------------------

    async def _pump(self, transport: TxTransport) -> None:
        sender = self.sender
        overhead = transport.overhead_bytes
        while True:
            self._wake.clear()
            now, wall = time.monotonic(), time.time()
            taken = self.queue.take(5000)
            for tag, entry in taken:
                src = self._by_channel.get(entry[0])
                data = src.taken(entry, wall) if src is not None else None
                if src is None:
                    self._orphan(entry[0])
                if data is not None:
                    sender.push(data, now, tag=tag)
                elif tag is not None:
                    sender.tag(tag)
            opcua_waiting = False
            for ua_src in self.opcua:
                for ua_rec in ua_src.take(now, 5000):
                    sender.push(records.encode(ua_rec), now)
                opcua_waiting |= ua_src.queue > 0
            deadline = sender.next_deadline()
            while deadline is not None and deadline <= now:
                sender.handle_timer(now)
                deadline = sender.next_deadline()
            for d in sender.pop_datagrams():
                cost = len(d) + overhead
                delay = self.bucket.delay(cost, time.monotonic())
                if delay > 0:
                    await asyncio.sleep(delay)
                self.bucket.take(cost, time.monotonic())
                self._send(transport, d)
            self.queue.framed(sender.pop_framed())
            if len(taken) == 5000 or opcua_waiting:
                await asyncio.sleep(0)
                continue
            deadline = sender.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    def _orphan(self, channel: str) -> None:
        """A spooled message of a channel no longer configured: dropped, counted, told once."""
        self.counters["orphaned"] = self.counters.get("orphaned", 0) + 1
        if self.counters["orphaned"] == 1:
            log.warning("the spool holds messages of channel '%s', which %s no longer has; "
                        "they are dropped", channel, self.cfg.path)

    def _send(self, transport: TxTransport, datagram: bytes) -> None:
        try:
            transport.send(datagram)
            self.board.beat("send")
        except OSError as exc:
            n = self.counters["send_errors"] = self.counters["send_errors"] + 1
            if n in (1, 10, 100) or n % 10000 == 0:
                log.error("link send failed (%d so far): %s", n, exc)

    def _push_now(self, record: bytes) -> None:
        self.sender.push(record, time.monotonic())
        self._wake.set()

    def _source_states(self) -> dict[str, str]:
        states = {f"mqtt:{s.ch.name}": s.state for s in self.sources}
        states.update({f"opcua:{s.cfg.name}": s.state for s in self.opcua})
        return states

    def _push_heartbeat(self, now: float) -> None:
        link = self.cfg.link
        self.sender.push_heartbeat(lambda: records.encode(records.Heartbeat(
            time.time(), link.heartbeat_interval, link.repeat, self._counters(),
            self._source_states())), now)

    async def _heartbeats(self) -> None:
        while True:
            self._push_heartbeat(time.monotonic())
            self._wake.set()
            await asyncio.sleep(self.cfg.link.heartbeat_interval)

    async def _carousel(self, src: MqttSource, rate: float) -> None:
        """Re-send retained state every period, within its share of the link."""
        ch = src.ch
        bucket = TokenBucket(rate * ch.carousel_share, self.cfg.link.mtu * 4, time.monotonic())
        while True:
            await asyncio.sleep(ch.carousel_period)
            started = time.monotonic()
            # Each record is read from the retained state just before it is pushed,
            # with no await between: the pacing wait comes after the push, since
            # live messages pushed during a wait would make a copy read before it
            # stale (RX would then publish an old value after a newer one).
            for rec in src.carousel():
                data = records.encode(rec)
                now = time.monotonic()
                self.sender.push(data, now)
                bucket.take(len(data), now)
                self._wake.set()
                delay = bucket.delay(1, now)
                if delay > 0:
                    await asyncio.sleep(delay)
            took = time.monotonic() - started
            if took > ch.carousel_period:
                log.warning("channel '%s': carousel of %d retained topics took %.1f s, longer "
                            "than carousel_period; raise carousel_share or the period",
                            ch.name, len(src.retained), took)

    async def _status(self) -> None:
        while True:
            self._write_status()
            await asyncio.sleep(self.cfg.status_interval)

    async def _sync(self) -> None:
        """Batched fsync of the spool, and the OT acknowledgements it releases."""
        interval = (self.cfg.spool.fsync_interval_ms / 1000 if self.cfg.spool else 1.0) or 0.01
        while True:
            self.queue.tick()
            await asyncio.sleep(interval)

    async def _leds(self) -> None:
        sent = -1
        while True:
            now = time.monotonic()
            dropped = sum(s.counters["queue_dropped"] for s in self.sources) + \
                self.queue.dropped()
            fault = self.board.fault({"send_errors": self.counters["send_errors"],
                                      "dropped": dropped}, now)
            states = self._source_states().values()
            connected = sum(s == "connected" for s in states)
            datagrams = self.sender.counters["datagrams"]
            self.board.show(None, connected, len(states), fault, sending=datagrams != sent)
            sent = datagrams
            await asyncio.sleep(0.1)

    # -- reporting ---------------------------------------------------------------

    def _counters(self) -> dict[str, int]:
        out = dict(self.sender.counters)
        out.update(self.counters)
        for src in self.sources:
            for k, v in {**src.counters, **src.conn.counters}.items():
                out[f"mqtt:{src.ch.name}.{k}"] = v
        for ua_src in self.opcua:
            for k, v in ua_src.counters.items():
                out[f"opcua:{ua_src.cfg.name}.{k}"] = v
        return out

    def _write_status(self) -> None:
        status: dict[str, Any] = {
            "role": "tx", "time": time.time(), "config": str(self.cfg.path),
            "epoch": f"{self.epoch:016x}", "key_fingerprint": key_fingerprint(self.key),
            "counters": self._counters(),
            "sources": self._source_states(),
            "queue": self.queue.stats(),
            "board": self.board.describe(),
        }
        write_status(self.cfg.status_file, status)
