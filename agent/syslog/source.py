"""TX side: the syslog listeners of one channel, on the OT side.

```
OT devices ─► udp://ADDR:PORT (one datagram, one message) ──────────┐
           ─► tcp://ADDR:PORT ─► StreamFramer (octet counting | LF) ─┼─► record ─► queue ─► take()
           ─► tls://ADDR:PORT ─► TLS handshake ─► StreamFramer ──────┘  (memory or own spool)
```

This is the one place where TX listens, and only as configured: each listener
is bound to the OT-side address its `listen` entry names (a wildcard is refused
by the config), nothing is opened by default, and the image's firewall opens
exactly these ports on that address (images/imagelib.py). Listening changes
nothing about the diode: what arrives here can only go on towards IT.

Each message is kept as the bytes that came (framing removed) with the
sender's address and the receive time, and encoded into its link record at
once, so the queue holds records ready to send. Limits, each counted:
- `max_message_size`: longer messages are truncated to it (`truncated`).
- `max_connections`: a TCP or TLS connection beyond it is closed at once
  (`connections_refused`); `idle_timeout` closes silent ones (`idle_closed`).
- `queue_limit` (and in memory `queue_bytes`): once half the queue is in use,
  TCP and TLS senders are paused
  (`paused`; their own buffers then hold the burst, and nothing is lost), and
  resumed below a quarter. UDP has no flow control: a datagram that finds the
  queue full is dropped (`queue_dropped`), and datagrams the kernel dropped
  because the socket buffer was full are read from SO_RXQ_OVFL
  (`udp_kernel_dropped`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Mapping
from typing import Any

from agent.adapter import Carousel, SourceState, TxContext
from agent.queues import MemoryQueue, SpoolQueue
from agent.syslog.codec import TCP, TLS, UDP, encode_with, record_head
from agent.syslog.config import Endpoint, TxSyslogChannel
from agent.syslog.framing import FramingError, StreamFramer
from agent.transport.udp import deep_receive_buffer

log = logging.getLogger("diode.source.syslog")

SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)   # Linux: a count of datagrams dropped
_UDP_BATCH = 256          # datagrams read per wake-up of the loop
_HANDSHAKE_TIMEOUT = 10.0
_LOG_EVERY = 5.0


def spool_name(channel: str) -> str:
    """The channel's spool folder: not its bare name, which an MQTT channel may share."""
    return f"{channel}.syslog"


def _identity(b: bytes) -> bytes:
    return b


class SyslogSource:
    def __init__(self, ch: TxSyslogChannel, ctx: TxContext) -> None:
        self.ch = ch
        self.key = f"syslog:{ch.name}"
        self._wake, self._fail = ctx.wake, ctx.fail
        spool = ctx.open_spool(spool_name(ch.name))
        self.queue: MemoryQueue[bytes] | SpoolQueue[bytes] = (
            MemoryQueue(ch.queue_limit) if spool is None
            else SpoolQueue(spool, _identity, _identity, lambda e: None))
        self._counters = {"received": 0, "truncated": 0, "queue_dropped": 0,
                          "udp_kernel_dropped": 0, "connections": 0, "connections_open": 0,
                          "connections_refused": 0, "idle_closed": 0, "framing_errors": 0,
                          "tls_failures": 0, "paused": 0}
        self.carousels: tuple[Carousel, ...] = ()
        self._state = SourceState.STOPPED
        self._tls = self._tls_context() if any(e.transport == "tls" for e in ch.listen) else None
        self._open: dict[Endpoint, Any] = {}       # endpoint -> server or UDP socket
        self._udp_drops: dict[int, int] = {}       # socket fd -> kernel's drop count
        self._conns: set[_Stream] = set()
        self._paused = False
        self._pause_at = max(1, ch.queue_limit // 2)
        self._resume_at = ch.queue_limit // 4
        self._bytes = 0    # in the memory queue, bounded by queue_bytes (a spool bounds itself)
        self._count_bytes = spool is None
        self._logged: dict[str, float] = {}
        self._opener: asyncio.Task[None] | None = None
        self._idle_checked = 0.0

    # -- the Source contract ------------------------------------------------------------

    @property
    def state(self) -> SourceState:
        return self._state

    @property
    def counters(self) -> Mapping[str, int]:
        self._counters["connections_open"] = len(self._conns)
        return self._counters

    async def start(self) -> None:
        self._state = SourceState.CONNECTING
        await self._open_listeners()
        if self._state is not SourceState.CONNECTED and self._state is not SourceState.REFUSED:
            self._opener = asyncio.create_task(self._retry_listeners())

    async def stop(self) -> None:
        if self._opener is not None:
            self._opener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._opener
        loop = asyncio.get_running_loop()
        for ep, handle in self._open.items():
            if ep.transport == "udp":
                loop.remove_reader(handle.fileno())
                handle.close()
            else:
                handle.close()
        for conn in list(self._conns):
            conn.abort()
        self._open.clear()
        self._state = SourceState.STOPPED

    def take(self, wall: float, limit: int) -> list[tuple[bytes | None, object]]:
        out: list[tuple[bytes | None, object]] = [(data, tag) for tag, data in
                                                  self.queue.take(limit)]
        if self._count_bytes and out:
            self._bytes -= sum(len(d) for d, _ in out if d is not None)
        if self._paused and len(self.queue) <= self._resume_at \
                and self._bytes <= self.ch.queue_bytes // 4:
            self._paused = False
            for conn in self._conns:
                conn.resume()
        return out

    def framed(self, tags: list[object]) -> None:
        self.queue.framed(tags)

    def rewind(self) -> None:
        self.queue.rewind()

    def waiting(self) -> int:
        return len(self.queue)

    def dropped(self) -> int:
        c = self._counters
        return c["queue_dropped"] + c["udp_kernel_dropped"] + self.queue.dropped()

    def stats(self) -> dict[str, Any]:
        return {**self.queue.stats(), "listeners": [ep.label for ep in self._open]}

    def tick(self) -> None:
        self.queue.tick()
        now = time.monotonic()
        if now - self._idle_checked >= 1.0:
            self._idle_checked = now
            limit = self.ch.idle_timeout
            for conn in list(self._conns):
                if not self._paused and now - conn.last > limit:
                    self._counters["idle_closed"] += 1
                    conn.abort()

    def close(self) -> None:
        self.queue.close()

    # -- listeners ------------------------------------------------------------------------

    def _tls_context(self) -> ssl.SSLContext:
        """The files were loaded once already, by the config reader."""
        ch = self.ch
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(ch.tls_cert_file), str(ch.tls_key_file))
        if ch.tls_client_ca_file is not None:
            ctx.load_verify_locations(str(ch.tls_client_ca_file))
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    async def _open_listeners(self) -> bool:
        """Open what is not open yet; True when all are. A port below 1024 without the
        capability to bind it is fatal (a retry cannot help); anything else (the address
        not up yet at boot) is retried."""
        loop = asyncio.get_running_loop()
        for ep in self.ch.listen:
            if ep in self._open:
                continue
            try:
                if ep.transport == "udp":
                    self._open[ep] = self._open_udp(ep, loop)
                else:
                    code = TLS if ep.transport == "tls" else TCP
                    self._open[ep] = await loop.create_server(
                        functools.partial(_Stream, self, code), ep.host, ep.port,
                        reuse_address=True, backlog=128)
                log.info("syslog channel '%s': listening on %s", self.ch.name, ep.label)
            except OSError as exc:
                if exc.errno == errno.EACCES:
                    self._state = SourceState.REFUSED
                    self._fail(f"syslog channel '{self.ch.name}': cannot listen on {ep.label}: "
                               f"{exc.strerror}. Fix: give TX CAP_NET_BIND_SERVICE for a port "
                               "below 1024, or use a port above 1023")
                    return False
                self._state = SourceState.DISCONNECTED
                self._log_once(f"bind {ep.label}", logging.ERROR,
                               "syslog channel '%s': cannot listen on %s: %s; retrying. Fix: "
                               "the address must be one of TX's own OT-side addresses, and the "
                               "port free", self.ch.name, ep.label, exc.strerror or exc)
                return False
        self._state = SourceState.CONNECTED
        return True

    async def _retry_listeners(self) -> None:
        delay = 1.0
        while not await self._open_listeners() and self._state is not SourceState.REFUSED:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    def _open_udp(self, ep: Endpoint, loop: asyncio.AbstractEventLoop) -> socket.socket:
        family = socket.AF_INET6 if ipaddress.ip_address(ep.host).version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            want = self.ch.udp_receive_buffer
            # beyond net.core.rmem_max: needs CAP_NET_ADMIN, which TX has on a board
            got = deep_receive_buffer(sock, want)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
            sock.bind((ep.host, ep.port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        if got < want:
            log.warning("syslog channel '%s': %s has a receive buffer of %d bytes, not the %d "
                        "configured (net.core.rmem_max; TX lacks CAP_NET_ADMIN to exceed it): "
                        "a burst may be dropped by the kernel (counted as "
                        "udp_kernel_dropped)", self.ch.name, ep.label, got, want)
        loop.add_reader(sock.fileno(), self._udp_ready, sock)
        return sock

    def _udp_ready(self, sock: socket.socket) -> None:
        size = self.ch.max_message_size
        space = socket.CMSG_SPACE(4)
        put, name, counters = self._put, self.ch.name, self._counters
        recvmsg, trunc = sock.recvmsg, socket.MSG_TRUNC
        wall = time.time()
        got = 0
        heads: dict[tuple[str, int], bytes] = {}
        for _ in range(_UDP_BATCH):
            try:
                data, anc, flags, addr = recvmsg(size, space)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ICMP errors queued on the socket: not ours to stop
                self._log_once("udp-error", logging.WARNING, "syslog channel '%s': %s", name,
                               exc)
                break
            got += 1
            if anc:
                self._kernel_drops(sock, anc)
            head = heads.get(addr[:2])
            if head is None:
                head = heads[addr[:2]] = record_head(name, wall, addr[0], addr[1], UDP)
            truncated = bool(flags & trunc)
            if truncated:
                counters["truncated"] += 1
            if not put(encode_with(head, truncated, data)):
                self._queue_full()
        if got:
            counters["received"] += got
            self._wake()

    def _kernel_drops(self, sock: socket.socket, anc: list[tuple[int, int, bytes]]) -> None:
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(data) >= 4:
                total = int.from_bytes(data[:4], "little")
                fd = sock.fileno()
                before = self._udp_drops.get(fd, 0)
                if total > before:
                    self._udp_drops[fd] = total
                    self._counters["udp_kernel_dropped"] += total - before
                    self._log_once("kernel", logging.ERROR,
                                   "syslog channel '%s': the kernel dropped %d UDP datagram(s) "
                                   "(socket buffer full). Fix: raise udp_receive_buffer, or "
                                   "have the senders use TCP", self.ch.name,
                                   self._counters["udp_kernel_dropped"])

    def _put(self, record: bytes) -> bool:
        """Into the queue, within queue_limit and (in memory) queue_bytes; False when full."""
        if not self._count_bytes:
            return self.queue.put(record, None)
        if self._bytes + len(record) > self.ch.queue_bytes or not self.queue.put(record, None):
            return False
        self._bytes += len(record)
        return True

    def _queue_full(self) -> None:
        self._counters["queue_dropped"] += 1
        self._log_once("queue", logging.ERROR,
                       "syslog channel '%s': queue full (%d messages or queue_bytes); dropping "
                       "messages (%d so far). "
                       "The link is slower than the OT traffic: raise [link] bitrate, lower "
                       "the senders' volume, or give TX a [spool]", self.ch.name,
                       self.ch.queue_limit, self._counters["queue_dropped"])

    def _log_once(self, what: str, level: int, msg: str, *args: Any) -> None:
        """At most one line per `what` every few seconds."""
        now = time.monotonic()
        if now - self._logged.get(what, -1e9) >= _LOG_EVERY:
            self._logged[what] = now
            log.log(level, msg, *args)

    # -- from the stream connections --------------------------------------------------------

    def accepted(self, conn: _Stream) -> bool:
        if len(self._conns) >= self.ch.max_connections:
            self._counters["connections_refused"] += 1
            self._log_once("conns", logging.WARNING,
                           "syslog channel '%s': %d connections open (max_connections); "
                           "closing one from %s (%d refused so far)", self.ch.name,
                           len(self._conns), conn.peer, self._counters["connections_refused"])
            return False
        self._counters["connections"] += 1
        self._conns.add(conn)
        if self._paused:
            conn.pause()
        return True

    def closed(self, conn: _Stream) -> None:
        self._conns.discard(conn)

    def messages(self, conn: _Stream, msgs: list[tuple[bytes, bool]]) -> None:
        put, counters = self._put, self._counters
        head = record_head(self.ch.name, time.time(), conn.host, conn.port, conn.transport_code)
        counters["received"] += len(msgs)
        for data, truncated in msgs:
            if truncated:
                counters["truncated"] += 1
            if not put(encode_with(head, truncated, data)):
                self._queue_full()
        if not self._paused and (len(self.queue) >= self._pause_at
                                 or self._bytes >= self.ch.queue_bytes // 2):
            self._paused = True
            counters["paused"] += 1
            for c in self._conns:
                c.pause()
        self._wake()

    def framing_error(self, conn: _Stream, exc: FramingError) -> None:
        self._counters["framing_errors"] += 1
        self._log_once("framing", logging.WARNING, "syslog channel '%s': closing the connection "
                       "from %s: %s (%d framing errors so far)", self.ch.name, conn.peer, exc,
                       self._counters["framing_errors"])

    def tls_failed(self, conn: _Stream, exc: BaseException) -> None:
        self._counters["tls_failures"] += 1
        self._log_once("tls", logging.WARNING, "syslog channel '%s': TLS handshake with %s "
                       "failed: %s (%d so far)", self.ch.name, conn.peer, exc,
                       self._counters["tls_failures"])


class _Stream(asyncio.Protocol):
    """One TCP or TLS connection from an OT sender."""

    def __init__(self, source: SyslogSource, transport: int) -> None:
        self.source = source
        self.transport_code = transport
        self.transport: asyncio.Transport | None = None
        self.framer = StreamFramer(source.ch.max_message_size)
        self.host, self.port, self.last = "", 0, time.monotonic()
        self._reading = True
        self._tls_pending = transport == TLS
        self._handshaking: asyncio.Task[None] | None = None  # held, so it is not collected
        self._lost = False

    @property
    def peer(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername") or ("", 0)
        self.host, self.port = str(peer[0]), int(peer[1])
        if not self.source.accepted(self):
            transport.abort()
            return
        if self._tls_pending:  # not a byte to the framer before the handshake (start_tls resumes)
            transport.pause_reading()
        with contextlib.suppress(OSError):
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if self._tls_pending:
            self._handshaking = asyncio.get_running_loop().create_task(self._handshake(transport))

    async def _handshake(self, raw: asyncio.Transport) -> None:
        ctx = self.source._tls
        assert ctx is not None
        try:
            tls = await asyncio.get_running_loop().start_tls(
                raw, self, ctx, server_side=True, ssl_handshake_timeout=_HANDSHAKE_TIMEOUT)
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as exc:
            self.source.tls_failed(self, exc)
            raw.abort()
            return
        if tls is None or self._lost:
            return
        self.transport = tls
        self._tls_pending = False
        if not self._reading:
            tls.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.last = time.monotonic()
        try:
            msgs = self.framer.feed(data)
        except FramingError as exc:
            self.source.framing_error(self, exc)
            self.abort()
            return
        if msgs:
            self.source.messages(self, msgs)

    def eof_received(self) -> bool | None:
        last = self.framer.close()
        if last is not None:
            self.source.messages(self, [last])
        return None  # close the connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.source.closed(self)

    def pause(self) -> None:
        self._reading = False
        if self.transport is not None and not self._tls_pending:
            with contextlib.suppress(RuntimeError):
                self.transport.pause_reading()

    def resume(self) -> None:
        self._reading = True
        self.last = time.monotonic()
        if self.transport is not None and not self._tls_pending:
            with contextlib.suppress(RuntimeError):
                self.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

