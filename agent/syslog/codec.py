"""The syslog record on the link, and its hand-written encoder (TX's hot path).

| tag | record        | fields                                                          |
|-----|---------------|-----------------------------------------------------------------|
| 8   | SyslogMessage | channel, received, host, port, transport, truncated, message    |

One record per message: the link sender packs records up to the MTU anyway, so
a burst of short messages shares frames, and a lost frame loses only the
messages it held (a batch record bigger than a frame would be fragmented, and
one lost fragment would lose the whole batch).

- `received`: TX's wall clock when the message arrived (Unix seconds, float64).
- `host`, `port`: the sender's address as TX saw it.
- `transport`: 0 UDP, 1 TCP, 2 TLS.
- `truncated`: the message was longer than `max_message_size` and cut to it.
- `message`: the original bytes, without the transport's framing (the UDP
  datagram; the octet-counted frame's content; the line before its LF).
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

from agent.link.records import RecordError, register

UDP, TCP, TLS = 0, 1, 2
TRANSPORT_NAMES = ("udp", "tcp", "tls")
TRANSPORT_CODES = {name: code for code, name in enumerate(TRANSPORT_NAMES)}


class _SyslogFields(NamedTuple):
    channel: str
    received: float
    host: str
    port: int
    transport: int
    truncated: bool
    message: bytes


@register
class SyslogMessage(_SyslogFields):
    """A NamedTuple, like MqttMessage: RX builds one per message."""

    __slots__ = ()
    TAG = 8

    def to_list(self) -> list[Any]:
        return [self.TAG, *self]

    @classmethod
    def from_list(cls, f: list[Any]) -> SyslogMessage:
        _, channel, received, host, port, transport, truncated, message = f
        if channel.__class__ is not str or host.__class__ is not str \
                or message.__class__ is not bytes or transport not in (UDP, TCP, TLS) \
                or port.__class__ is not int or not 0 <= port <= 65535 \
                or received.__class__ not in (float, int) or truncated.__class__ is not bool:
            raise RecordError("syslog record malformed")
        return tuple.__new__(cls, (channel, float(received), host, port, transport, truncated,
                                   message))


def _head(major: int, n: int) -> bytes:
    """A CBOR head: major type (shifted) and argument, in the shortest form."""
    if n < 24:
        return bytes((major | n,))
    if n < 0x100:
        return bytes((major | 24, n))
    if n < 0x10000:
        return bytes((major | 25,)) + n.to_bytes(2, "big")
    return bytes((major | 26,)) + n.to_bytes(4, "big")  # a message is below 4 GiB


_HEAD = bytes((0x88, SyslogMessage.TAG))  # an array of 8, the tag
_TEXT, _BYTES, _UINT = 0x60, 0x40, 0x00
_DOUBLE = struct.Struct(">Bd")
_SMALL_BYTES = [bytes((_BYTES | n,)) for n in range(24)]
_TRUE, _FALSE = b"\xf5", b"\xf4"
_prefixes: dict[str, bytes] = {}   # channel -> array head, tag and channel name
_peers: dict[tuple[str, int, int], bytes] = {}  # (host, port, transport) -> their CBOR


def record_head(channel: str, received: float, host: str, port: int, transport: int) -> bytes:
    """The encoded fields before `truncated`: the same for every message of one read
    (one datagram batch's time, one connection's peer), so built once per read."""
    prefix = _prefixes.get(channel)
    if prefix is None:
        c = channel.encode()
        prefix = _HEAD + _head(_TEXT, len(c)) + c
        if len(_prefixes) < 256:  # channels are the few of the config
            _prefixes[channel] = prefix
    peer = _peers.get((host, port, transport))
    if peer is None:
        h = host.encode()
        peer = _head(_TEXT, len(h)) + h + _head(_UINT, port) + _head(_UINT, transport)
        if len(_peers) >= 4096:  # senders come and go (ephemeral TCP ports): stay bounded
            _peers.clear()
        _peers[(host, port, transport)] = peer
    return prefix + _DOUBLE.pack(0xFB, received) + peer


def encode_with(head: bytes, truncated: bool, message: bytes) -> bytes:
    """One record from its `record_head` and the message: TX's hot path."""
    n = len(message)
    if n < 24:
        length = _SMALL_BYTES[n]
    elif n < 0x100:
        length = bytes((_BYTES | 24, n))
    else:
        length = _head(_BYTES, n)
    return b"".join((head, _TRUE if truncated else _FALSE, length, message))


def encode_syslog(channel: str, received: float, host: str, port: int, transport: int,
                  truncated: bool, message: bytes) -> bytes:
    """`encode(SyslogMessage(...))` without building the record or going through cbor2."""
    return encode_with(record_head(channel, received, host, port, transport), truncated,
                       message)
