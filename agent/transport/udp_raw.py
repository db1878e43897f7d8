"""UDP datagrams sent through a send-only raw socket: TX holds no UDP port at all.

An ordinary UDP socket gets an ephemeral port bound at its first `sendto`;
from then on it is a bound UDP socket (`ss -uan` lists it) that the kernel
delivers datagrams to. TX must have nothing that can receive. A raw socket
of protocol IPPROTO_RAW is send-only by definition (raw(7): it never
receives), so this transport writes the IPv4 and UDP headers itself and
hands whole packets to the kernel. RX sees ordinary UDP datagrams.

Wire layout of one packet (network byte order):

```
IPv4 header, 20 bytes (IP_HDRINCL)              UDP header, 8 bytes       payload
 ver/ihl 0x45 | tos 0 | total length*            source port               the datagram
 id 0*        | flags DF, fragment offset 0      destination port
 ttl 64       | proto 17 | header checksum*      length (8 + payload)
 source address (ours, or from the route)        checksum (RFC 768, never 0)
 destination address
```
`*` the kernel fills these in (raw(7): total length and header checksum
always; the id when it is 0).

Needs CAP_NET_RAW (root, or systemd `AmbientCapabilities=CAP_NET_RAW`).
A datagram must fit the interface MTU with its 28 header bytes: raw sockets
never fragment; a bigger one fails with EMSGSIZE (counted by TX as a send
error).
"""

from __future__ import annotations

import errno
import socket
import struct

from agent.transport.udp import UDP_OVERHEAD, _bind_to_device

__all__ = ["RawUdpTx", "udp_checksum"]

_IP_HEADER = struct.Struct("!BBHHHBBH4s4s")
_UDP_HEADER = struct.Struct("!HHHH")
_DF = 0x4000
_TTL = 64
# Datagrams whose headers are kept. Copies of a frame stand about (repeat - 1) x depth
# datagrams apart, within this for the default depths; a miss only recomputes.
_RECENT = 256


def _fold(total: int) -> int:
    """The 16-bit ones' complement sum of a byte string read as one big-endian integer.

    2**16 is 1 modulo 0xFFFF, so the end-around-carry sum of the 16-bit words
    is the integer modulo 0xFFFF, with 0xFFFF standing for a non-zero multiple.
    One big-integer remainder instead of a Python loop over 700 words.
    """
    rest = total % 0xFFFF
    return 0xFFFF if rest == 0 and total else rest


def _sum_bytes(data: bytes) -> int:
    value = int.from_bytes(data, "big")
    return value << 8 if len(data) % 2 else value  # pad an odd length with a zero byte


def udp_checksum(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> int:
    """RFC 768 checksum over the IPv4 pseudo-header, UDP header and payload."""
    return _checksum(_constant_sum(src, dst, sport, dport), payload)


def _constant_sum(src: bytes, dst: bytes, sport: int, dport: int) -> int:
    """The part of the sum that is the same for every datagram of one sender."""
    return _sum_bytes(src) + _sum_bytes(dst) + socket.IPPROTO_UDP + sport + dport


def _checksum(constant: int, payload: bytes) -> int:
    # The UDP length counts twice: in the pseudo-header and in the UDP header.
    csum = ~_fold(constant + 2 * (8 + len(payload)) + _sum_bytes(payload)) & 0xFFFF
    return csum or 0xFFFF  # 0 on the wire means "no checksum"


class RawUdpTx:
    """Sends UDP datagrams to (host, port) from a send-only IPPROTO_RAW socket.

    `source` is the IPv4 source address to write (default: the address the
    route to `host` picks); `source_port` the UDP source port written in the
    header (default: `port`). No port is bound: nothing on TX listens on it.
    """

    overhead_bytes = UDP_OVERHEAD

    def __init__(self, host: str, port: int, source: str | None = None,
                 interface: str | None = None, *, broadcast: bool = False,
                 source_port: int | None = None) -> None:
        for p in (port, port if source_port is None else source_port):
            if not 1 <= p <= 65535:
                raise ValueError(f"UDP port {p} out of range 1..65535")
        try:
            self.dst = socket.inet_aton(socket.gethostbyname(host))
        except OSError as exc:
            raise OSError(errno.EINVAL, f"cannot resolve link host {host!r}: {exc}. Fix: set "
                          "[link] host to RX's IPv4 address") from None
        self.host = socket.inet_ntoa(self.dst)
        self.port = port
        self.sport = port if source_port is None else source_port
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        except PermissionError:
            raise PermissionError(errno.EPERM, "cannot open a raw socket to send UDP without a "
                                  "bound port: not permitted. Fix: run TX as root, or give it "
                                  "CAP_NET_RAW (systemd: AmbientCapabilities=CAP_NET_RAW)") \
                from None
        self.sock = sock
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            if broadcast:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            if interface:
                _bind_to_device(sock, interface)
        except OSError:
            sock.close()
            raise
        self.src: bytes | None = None
        self._constant = 0
        self._recent: dict[int, tuple[bytes, bytes]] = {}
        if source:
            try:
                self._set_source(socket.inet_aton(source))
            except OSError:
                sock.close()
                raise OSError(errno.EINVAL, f"source address {source!r} is not an IPv4 "
                              "address. Fix: set [link] source to TX's own IPv4 address on "
                              "the link, or remove it") from None

    def _set_source(self, src: bytes) -> None:
        self.src = src
        self._constant = _constant_sum(src, self.dst, self.sport, self.port)

    def _source(self) -> bytes:
        """Our source address: as configured, else what the route to RX picks.

        `connect` on a raw socket only records the peer and picks the
        source address from the route; raw sockets have no ports to bind.
        """
        if self.src is None:
            self.sock.connect((self.host, 0))
            self._set_source(socket.inet_aton(self.sock.getsockname()[0]))
        assert self.src is not None
        return self.src

    def _header(self, datagram: bytes) -> bytes:
        src = self._source()  # first, since it also sets the checksum's constant part
        length = 8 + len(datagram)
        csum = _checksum(self._constant, datagram)
        return _IP_HEADER.pack(0x45, 0, 20 + length, 0, _DF, _TTL, socket.IPPROTO_UDP, 0,
                               src, self.dst) + _UDP_HEADER.pack(self.sport, self.port,
                                                                 length, csum)

    def send(self, datagram: bytes) -> None:
        # Repetition sends the very same bytes object r times, a few datagrams apart:
        # its headers are built once (the checksum costs ~3.6 us per 1400 bytes here).
        # The cache holds the datagram itself, so its id cannot be reused meanwhile.
        recent = self._recent
        hit = recent.get(id(datagram))
        if hit is not None and hit[0] is datagram:
            header = hit[1]
        else:
            header = self._header(datagram)
            recent[id(datagram)] = (datagram, header)
            if len(recent) > _RECENT:
                del recent[next(iter(recent))]
        try:
            self.sock.sendmsg([header, datagram], [], 0, (self.host, 0))
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                raise OSError(errno.EMSGSIZE, f"datagram of {len(datagram)} bytes plus 28 header "
                              "bytes exceeds the interface MTU (raw sockets do not fragment). "
                              "Fix: lower [link] mtu or raise the interface MTU") from None
            raise

    def close(self) -> None:
        self.sock.close()
