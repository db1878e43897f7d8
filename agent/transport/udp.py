"""UDP transport: unicast or broadcast datagrams to a configured destination."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from agent.transport.base import DatagramHandler

# IPv4 + UDP headers, Ethernet header and FCS: what a datagram costs beyond itself.
UDP_OVERHEAD = 20 + 8 + 14 + 4


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
        for opt in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
            if opt is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, 32 << 20)
                    break
                except OSError:
                    continue
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

    def close(self) -> None:
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock)
            self._sock.close()
            self._sock = None
