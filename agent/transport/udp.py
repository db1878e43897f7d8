"""UDP transport: unicast or broadcast datagrams to a configured destination."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from pathlib import Path

from agent.transport.base import DatagramHandler

log = logging.getLogger("diode.rx")

# IPv4 + UDP headers, Ethernet header and FCS: what a datagram costs beyond itself.
UDP_OVERHEAD = 20 + 8 + 14 + 4
# Python's socket module lacks the constant (Linux: 33); without it the request
# silently stops at net.core.rmem_max (4 MiB on Debian), an eighth of what RX asks.
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
RX_BUFFER = 32 << 20


def deep_receive_buffer(sock: socket.socket, want: int) -> int:
    """Ask for a receive buffer of `want` bytes, beyond net.core.rmem_max when the
    process has CAP_NET_ADMIN; the size the kernel granted (it reports double)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, want)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, want)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2


def kernel_drops(sock: socket.socket, table: Path = Path("/proc/net/udp")) -> int | None:
    """Datagrams the kernel dropped for `sock` (its receive buffer was full), from the
    socket's line in /proc/net/udp; None where that is not readable."""
    try:
        inode = str(os.fstat(sock.fileno()).st_ino)
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 12 and fields[9] == inode:
                return int(fields[12])
    except (OSError, ValueError):
        return None
    return None


def _bind_to_device(sock: socket.socket, interface: str) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode() + b"\0")
    except OSError as exc:
        raise OSError(exc.errno, f"cannot bind to interface {interface!r}: {exc.strerror}. "
                      "Fix: check [link] interface names an existing interface, and that the "
                      "agent has CAP_NET_RAW") from None


class UdpTx:
    """Sends only. The socket is never read, and its receive buffer is minimal."""

    overhead_bytes = UDP_OVERHEAD

    def __init__(self, host: str, port: int, *, source: str | None = None,
                 interface: str | None = None, broadcast: bool = False) -> None:
        self.addr = (host, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
        if broadcast:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        if interface:
            _bind_to_device(self.sock, interface)
        if source:
            self.sock.bind((source, 0))
        # Half-close the read side: nothing that reaches this socket is ever read.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RD)

    def send(self, datagram: bytes) -> None:
        self.sock.sendto(datagram, self.addr)

    def close(self) -> None:
        self.sock.close()


class UdpRx:
    """Reads every waiting datagram per wake-up: asyncio's datagram transport
    reads one per loop pass, which cost RX a full loop pass per datagram."""

    BATCH = 256

    def __init__(self, host: str, port: int, *, interface: str | None = None) -> None:
        self.host, self.port, self.interface = host, port, interface
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, on_datagram: DatagramHandler) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # A deep receive buffer rides out bursts while the loop is busy publishing.
        got = deep_receive_buffer(sock, RX_BUFFER)
        if got < RX_BUFFER:
            log.warning("link: UDP receive buffer of %d bytes, not %d (net.core.rmem_max, "
                        "and RX lacks CAP_NET_ADMIN to exceed it): a burst from TX may be "
                        "dropped by the kernel (counted as kernel_dropped). Fix: run RX with "
                        "CAP_NET_ADMIN, as the board's unit does, or raise "
                        "net.core.rmem_max", got, RX_BUFFER)
        if self.interface:
            _bind_to_device(sock, self.interface)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"cannot listen on UDP {self.host}:{self.port}: "
                          f"{exc.strerror}. Fix: check [link] host and port, and that no other "
                          "agent uses them") from None
        sock.setblocking(False)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock, self._readable, on_datagram)

    def _readable(self, on_datagram: DatagramHandler) -> None:
        recv = self._sock.recv  # type: ignore[union-attr]
        for _ in range(self.BATCH):
            try:
                data = recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # e.g. ICMP errors surfacing; nothing to read for us
            on_datagram(data)

    def counters(self) -> dict[str, int]:
        """`kernel_dropped`: datagrams lost in RX's own kernel, its buffer full (RX fell
        behind TX's rate), which the link's loss figures show only as lost frames."""
        drops = None if self._sock is None else kernel_drops(self._sock)
        return {} if drops is None else {"kernel_dropped": drops}

    def close(self) -> None:
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock)
            self._sock.close()
            self._sock = None
