"""RX side: one IT collector, over UDP, TCP or TLS.

```
payload ─► UdpCollector: one datagram per message, at once (best effort: no backlog)
        ─► StreamCollector: backlog ─► drain (octet counting, one write per batch) ─► TCP | TLS ─► collector
                               ▲                                                         │
                               └── ack: bytes TCP acknowledged (SIOCOUTQ) ◄──────────────┘
```

A stream collector releases a message from its backlog only once TCP
acknowledged its last byte: the bytes written on this connection, less those
still in asyncio's buffer and in the kernel's send queue (SIOCOUTQ counts
written but unacknowledged bytes). Through TLS the kernel counts ciphertext,
which is never shorter than the plaintext it carries, so the same sum stays on
the safe side (a message may be released a moment late, never early). A
message written into a connection that then dies is therefore sent again on
the next one (RFC 6587 has no acknowledgement of its own).

TLS verifies the collector's certificate and name by default; a certificate
that fails verification is fatal, named with the fix, like a refusing broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import socket
import ssl
import struct
import termios
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from agent.adapter import SinkState
from agent.syslog.backlog import MemoryBacklog, SpoolBacklog
from agent.syslog.config import Endpoint, RxSyslogChannel

log = logging.getLogger("diode.sink.syslog")

_CONNECT_TIMEOUT = 10.0
_WRITE_HIGH = 1 << 20     # asyncio's write buffer: pause the drain above this
_BATCH = 2000             # messages per write
_LOG_EVERY = 5.0
TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)
_USER_TIMEOUT_MS = 30_000  # a collector that stops acknowledging for this long is gone


def _unacked(sock: socket.socket | None) -> int:
    """Bytes in the kernel's send queue not yet acknowledged by the peer."""
    if sock is None:
        return 0
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ,
                                                  b"\0\0\0\0"))[0])
    except OSError:
        return 0


def client_tls(ch: RxSyslogChannel) -> ssl.SSLContext:
    ctx = ssl.create_default_context(
        cafile=str(ch.tls_ca_file) if ch.tls_ca_file is not None else None)
    if ch.tls_cert_file is not None and ch.tls_key_file is not None:
        ctx.load_cert_chain(str(ch.tls_cert_file), str(ch.tls_key_file))
    if not ch.tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class UdpCollector:
    """Datagrams to a collector: nothing tells RX whether they arrived, so nothing is
    held; a send the kernel refuses (buffer full, ICMP port unreachable) is counted."""

    def __init__(self, ep: Endpoint, what: str) -> None:
        self.ep, self.what = ep, what
        self.counters = {"forwarded": 0, "send_errors": 0}
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._logged = -1e9

    @property
    def state(self) -> SinkState:
        return SinkState.CONNECTED if self._sock is not None else SinkState.CONNECTING

    async def start(self) -> None:
        if not await self._open():
            self._task = asyncio.create_task(self._retry())

    async def _open(self) -> bool:
        """Resolve and connect the socket; a name that does not resolve yet (DNS at boot)
        is retried, its messages meanwhile counted as send errors."""
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self.ep.host, self.ep.port, type=socket.SOCK_DGRAM)
            family, _, _, _, addr = infos[0]
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            sock.setblocking(False)
            sock.connect(addr)
        except OSError as exc:
            self._error(f"cannot resolve or connect: {exc}")
            return False
        self._sock = sock
        return True

    async def _retry(self) -> None:
        while not await self._open():
            await asyncio.sleep(5.0)

    def push(self, payload: bytes) -> None:
        sock = self._sock
        if sock is None:
            self.counters["send_errors"] += 1
            self._error("not connected")
            return
        try:
            sock.send(payload)
            self.counters["forwarded"] += 1
        except OSError as exc:
            self.counters["send_errors"] += 1
            self._error(exc.strerror or str(exc))

    def _error(self, why: str) -> None:
        now = time.monotonic()
        if now - self._logged >= _LOG_EVERY:
            self._logged = now
            log.error("%s: send failed (%s); %d message(s) lost so far. Fix: check the "
                      "collector is up, or use tcp:// so RX holds messages while it is away",
                      self.what, why, self.counters["send_errors"])

    def tick(self) -> None:
        pass

    def dropped(self) -> int:
        return self.counters["send_errors"]

    def status(self) -> dict[str, Any]:
        return {"state": self.state, **self.counters, "held": 0}

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class StreamCollector(asyncio.Protocol):
    def __init__(self, ep: Endpoint, what: str, ch: RxSyslogChannel,
                 backlog: MemoryBacklog | SpoolBacklog, tls: ssl.SSLContext | None,
                 fail: Callable[[str], None]) -> None:
        self.ep, self.what, self.ch = ep, what, ch
        self.backlog = backlog
        self._tls, self._fail = tls, fail
        self.counters = {"forwarded": 0, "resent": 0, "outages": 0, "connects": 0}
        self._state = SinkState.CONNECTING
        self._transport: asyncio.Transport | None = None
        self._sock: socket.socket | None = None
        self._written = 0
        self._inflight: deque[tuple[int, int]] = deque()   # (seq, end offset) on this connection
        self._paused = False
        self._scheduled = False
        self._resend_until = 0       # seq: what this connection sends again
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._logged: dict[str, float] = {}

    @property
    def state(self) -> SinkState:
        return self._state

    async def start(self) -> None:
        self._task = asyncio.create_task(self._connect_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._transport is not None:
            self._ack()
            self._transport.abort()
            self._transport = None
        self._state = SinkState.STOPPED
        lost = self.backlog.close()
        if lost:
            log.warning("%s: %d message(s) not yet acknowledged by the collector are lost with "
                        "this shutdown (no [spool])", self.what, lost)

    # -- connecting --------------------------------------------------------------------------

    async def _connect_loop(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self.ch.reconnect_min
        while True:
            self._lost.clear()
            try:
                await asyncio.wait_for(loop.create_connection(
                    lambda: self, self.ep.host, self.ep.port, ssl=self._tls,
                    server_hostname=self.ep.host if self._tls else None), _CONNECT_TIMEOUT)
            except ssl.SSLCertVerificationError as exc:
                self._state = SinkState.REFUSED
                self._fail(f"{self.what}: its certificate failed verification: "
                           f"{exc.verify_message or exc}. Fix: set tls_ca_file to the CA that "
                           "signed it, and check the collector's name matches its certificate")
                return
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                if self._state is not SinkState.DISCONNECTED:
                    self._state = SinkState.DISCONNECTED
                self._log("connect", logging.WARNING, "%s: cannot connect (%s); %d message(s) "
                          "held, retrying in %.1f s", self.what, exc, len(self.backlog), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.ch.reconnect_max)
                continue
            delay = self.ch.reconnect_min
            await self._lost.wait()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=_WRITE_HIGH)
        sock = transport.get_extra_info("socket")
        self._sock = sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT, _USER_TIMEOUT_MS)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._written = 0
        self._inflight.clear()
        self._paused = False
        held = len(self.backlog)
        self._resend_until = held - self.backlog.unsent  # written before, not acknowledged
        self.backlog.rewind()
        self.counters["connects"] += 1
        level = logging.INFO if self.counters["connects"] == 1 else logging.WARNING
        log.log(level, "%s: connected%s", self.what,
                f"; sending the {held} message(s) held" if held else "")
        self._state = SinkState.CONNECTED
        self._logged.pop("connect", None)
        self._kick()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None and self._state is SinkState.CONNECTED:
            self.counters["outages"] += 1
            log.warning("%s: connection lost (%s); holding messages until it is back",
                        self.what, exc or "closed by the collector")
        self._transport = self._sock = None
        if self._state is not SinkState.STOPPED and self._state is not SinkState.REFUSED:
            self._state = SinkState.DISCONNECTED
        self._lost.set()

    def data_received(self, data: bytes) -> None:
        pass  # a collector has nothing to say

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._kick()

    # -- sending ---------------------------------------------------------------------------

    def push(self, payload: bytes) -> None:
        self.backlog.push(payload)
        if not self._scheduled:
            self._kick()

    def _kick(self) -> None:
        if not self._scheduled and self._transport is not None and not self._paused:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        transport, inflight = self._transport, self._inflight
        while transport is not None and not self._paused:
            batch = self.backlog.next(_BATCH)
            if not batch:
                return
            written = self._written
            parts = []
            for seq, payload in batch:
                frame = b"%d %s" % (len(payload), payload)
                written += len(frame)
                inflight.append((seq, written))
                parts.append(frame)
            if self._resend_until > 0:
                n = min(self._resend_until, len(batch))
                self.counters["resent"] += n
                self._resend_until -= n
            self._written = written
            transport.write(b"".join(parts))
            transport = self._transport  # a write may have lost the connection

    def _ack(self) -> None:
        """Release what TCP acknowledged."""
        inflight = self._inflight
        if not inflight or self._transport is None:
            return
        acked = self._written - self._transport.get_write_buffer_size() - _unacked(self._sock)
        last = None
        n = 0
        while inflight and inflight[0][1] <= acked:
            last = inflight.popleft()[0]
            n += 1
        if last is not None:
            self.backlog.ack(last)
            self.counters["forwarded"] += n

    def tick(self) -> None:
        self._ack()
        self.backlog.tick()

    def dropped(self) -> int:
        return self.backlog.dropped

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self._state, **self.counters, "held": len(self.backlog),
                               "dropped": self.backlog.dropped}
        spool = self.backlog.stats()
        if spool is not None:
            out["spool"] = spool
        return out

    def _log(self, what: str, level: int, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._logged.get(what, -1e9) >= _LOG_EVERY:
            self._logged[what] = now
            log.log(level, msg, *args)
