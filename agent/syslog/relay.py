"""What RX sends a collector for one message: the original bytes, and optionally a
relay header in front, naming the TX board, the original sender and the time TX
received it. Pure functions; the original message is never altered.

`relay_header = "rfc5424"` (default) wraps the original as the MSG of an RFC 5424
message, so any collector parses the relay's part and keeps the original whole:

    <PRI>1 RECEIVED RELAY diode - - [diode@32473 peer="HOST" port="PORT" transport="udp"] ORIGINAL

- PRI is the original's when it starts with a valid `<PRI>`, else 13 (user.notice,
  what RFC 3164 section 4.3.3 has a relay put on a message without one), so the
  collector's facility and severity rules still apply.
- RECEIVED is TX's receive time, RFC 3339 in UTC with microseconds.
- RELAY is `relay_name` (default: the channel's name).
- The structured data element's ID uses 32473, the private enterprise number
  RFC 5612 reserves for documentation; `truncated="1"` is added when TX cut
  the message to its `max_message_size`.

`"plain"` puts one line of words before the original, for collectors that keep
the raw text only:

    diode-relay=RELAY peer=HOST:PORT transport=udp received=RECEIVED ORIGINAL

`"none"` sends the original bytes alone (the collector then sees RX as the sender).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from agent.syslog.codec import TRANSPORT_NAMES, SyslogMessage

SD_ID = "diode@32473"
DEFAULT_PRI = b"13"

_stamp_cache: dict[int, bytes] = {}


def rfc3339(t: float) -> bytes:
    """`2024-05-01T12:00:00.123456Z`; the seconds part is cached (a burst shares it)."""
    sec = int(t)
    head = _stamp_cache.get(sec)
    if head is None:
        if len(_stamp_cache) > 64:
            _stamp_cache.clear()
        head = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode()
        _stamp_cache[sec] = head
    return b"%s.%06dZ" % (head, min(999_999, int((t - sec) * 1_000_000)))


def original_pri(message: bytes) -> bytes:
    """The digits of the message's `<PRI>` (RFC 5424: 0..191, no leading zero but "0"),
    or DEFAULT_PRI."""
    if message[:1] != b"<":
        return DEFAULT_PRI
    end = message.find(b">", 1, 5)
    digits = message[1:end] if end > 1 else b""
    if digits.isdigit() and (digits == b"0" or digits[0] != 0x30) and int(digits) <= 191:
        return digits
    return DEFAULT_PRI


def _peer_words(m: SyslogMessage) -> tuple[bytes, bytes]:
    host = m.host
    if '"' in host or "\\" in host or "]" in host or " " in host:  # not an address: a TX bug
        host = host.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]") \
            .replace(" ", "_")
    return host.encode(errors="replace"), TRANSPORT_NAMES[m.transport].encode()


def wrapper(mode: str, relay: str) -> Callable[[SyslogMessage], bytes]:
    """The function turning a record into the payload every collector gets."""
    name = relay.encode()
    if mode == "none":
        return lambda m: m.message
    if mode == "plain":
        def plain(m: SyslogMessage) -> bytes:
            host, transport = _peer_words(m)
            if ":" in m.host:
                host = b"[" + host + b"]"
            return b"diode-relay=%s peer=%s:%d transport=%s received=%s%s %s" % (
                name, host, m.port, transport, rfc3339(m.received),
                b" truncated" if m.truncated else b"", m.message)
        return plain
    head = b" " + name + b" diode - - [" + SD_ID.encode() + b" peer=\""
    pris: dict[bytes, bytes] = {}                      # first 5 bytes -> PRI digits
    sds: dict[tuple[str, int, int, bool], bytes] = {}  # peer -> the SD element's rest
    stamps: dict[int, bytes] = {}

    def rfc5424(m: SyslogMessage) -> bytes:
        """The hot path on RX: what differs per message is cached by what decides it."""
        _, received, host, port, transport, truncated, msg = m
        first = msg[:5]
        pri = pris.get(first)
        if pri is None:
            pri = original_pri(msg)
            if len(pris) < 4096:
                pris[first] = pri
        key = (host, port, transport, truncated)
        sd = sds.get(key)
        if sd is None:
            h, t = _peer_words(m)
            sd = b'%s" port="%d" transport="%s"%s] ' % (
                h, port, t, b' truncated="1"' if truncated else b"")
            if len(sds) >= 4096:
                sds.clear()
            sds[key] = sd
        sec = int(received)
        stamp = stamps.get(sec)
        if stamp is None:
            if len(stamps) > 64:
                stamps.clear()
            stamp = stamps[sec] = time.strftime("%Y-%m-%dT%H:%M:%S",
                                                time.gmtime(sec)).encode()
        return b"<%s>1 %s.%06dZ%s%s%s" % (pri, stamp,
                                           min(999_999, int((received - sec) * 1_000_000)),
                                           head, sd, msg)
    return rfc5424
