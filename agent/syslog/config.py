"""Configuration of the syslog channels: `[[syslog]]` tables of tx.toml and rx.toml.

On TX a channel is a set of listeners on the OT side (the one place TX listens:
only the listeners named here, each bound to the address named here); on RX the
channel of the same name forwards to one or more IT collectors.

An endpoint is written `udp://ADDRESS:PORT`, `tcp://ADDRESS:PORT` or
`tls://ADDRESS:PORT` (IPv6 in brackets: `udp://[fd00::5]:514`).
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.config_reader import Table, read, setting

if TYPE_CHECKING:
    from agent.config import LinkConfig

TRANSPORTS = ("udp", "tcp", "tls")
_ENDPOINT = re.compile(r"^(udp|tcp|tls)://(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(\d{1,5})$")


@dataclass(frozen=True)
class Endpoint:
    transport: str   # udp | tcp | tls
    host: str        # TX: a literal IP address; RX: a name or address
    port: int

    @property
    def label(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}://{host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint | None:
    m = _ENDPOINT.match(text)
    if m is None or not 0 < int(m.group(3)) < 65536:
        return None
    return Endpoint(m.group(1), m.group(2).strip("[]"), int(m.group(3)))


@dataclass(frozen=True)
class TxSyslogChannel:
    name: str = setting(doc="channel name: a TX channel goes to the RX channel of the same name",
                        example='"plant"')
    listen: tuple[Endpoint, ...] = setting(
        doc="the listeners to open, each bound to an OT-side address of TX (no wildcard, not "
        "its `[link] source` or `interface_address`); nothing is opened that is not named here",
        example='["udp://10.0.0.5:514", "tcp://10.0.0.5:601", "tls://10.0.0.5:6514"]',
        manual=True)
    max_message_size: int = setting(8192, doc="bytes; a longer message is truncated to this "
                                     "and counted (`truncated`)", example="8192", lo=480,
                                     hi=65535)
    max_connections: int = setting(64, doc="TCP and TLS connections open at once; one more is "
                                   "closed at once and counted", example="64", lo=1, hi=10000)
    idle_timeout: float = setting(300.0, doc="seconds a TCP or TLS connection may stay silent "
                                  "before TX closes it", example="300.0", lo=1.0, hi=86400)
    queue_limit: int = setting(100_000, doc="messages held while the link is slower; TCP and TLS "
                               "senders are paused from half of it on, UDP overflow is dropped "
                               "and counted", example="100000", lo=1)
    queue_bytes: int = setting(32 << 20, doc="bytes the queue may hold in memory (without a "
                               "`[spool]`, whose `max_bytes` bounds it instead), as `queue_limit`",
                               example="33554432", lo=65536)
    udp_receive_buffer: int = setting(4 << 20, doc="bytes of kernel buffer per UDP listener "
                                      "for bursts (datagrams the kernel drops are counted)",
                                      example="4194304", lo=65536, hi=1 << 30)
    tls_cert_file: Path | None = setting(None, doc="TLS listeners: TX's certificate (PEM)",
                                         example='"syslog.crt"')
    tls_key_file: Path | None = setting(None, doc="TLS listeners: its key (PEM)",
                                        example='"syslog.key"')
    tls_client_ca_file: Path | None = setting(None, doc="TLS listeners: accept only senders "
                                              "with a certificate from this CA (unset: no "
                                              "client certificate asked)",
                                              example='"ot-ca.crt"')


@dataclass(frozen=True)
class RxSyslogChannel:
    name: str = setting(doc="channel name: a TX channel goes to the RX channel of the same name",
                        example='"plant"')
    collectors: tuple[Endpoint, ...] = setting(
        doc="IT collectors; every message goes to each (TCP and TLS with octet counting)",
        example='["tcp://10.1.0.30:601", "tls://siem.example:6514"]', manual=True)
    relay_header: str = setting("rfc5424", doc='`"rfc5424"`: the original message becomes the '
                                "MSG of an RFC 5424 message naming the relay, the sender and "
                                'the receive time; `"plain"`: `diode-relay=NAME peer=… '
                                'received=… ` before it; '
                                '`"none"`: the original bytes alone', example='"rfc5424"',
                                choices=("rfc5424", "plain", "none"))
    relay_name: str = setting("", doc="names the TX board in the relay header",
                              example='"tx-plant1"', default_doc="the channel's `name`")
    queue_limit: int = setting(100_000, doc="messages held per TCP or TLS collector while it is "
                               "away or slower (without a `[spool]`); the oldest are dropped "
                               "and counted", example="100000", lo=1)
    queue_bytes: int = setting(32 << 20, doc="bytes held per TCP or TLS collector in memory, "
                               "as `queue_limit`", example="33554432", lo=65536)
    tls_ca_file: Path | None = setting(None, doc="TLS collectors: the CA to verify them with "
                                       "(unset: the system CAs)", example='"it-ca.crt"')
    tls_cert_file: Path | None = setting(None, doc="TLS collectors: RX's client certificate "
                                         "(with `tls_key_file`)", example='"rx.crt"')
    tls_key_file: Path | None = setting(None, doc="TLS collectors: its key",
                                        example='"rx.key"')
    tls_verify: bool = setting(True, doc="verify the collector's certificate and name; turning "
                               "it off logs a warning at every start", example="true")
    reconnect_min: float = setting(1.0, doc="first reconnect delay to a collector; it doubles "
                                   "up to `reconnect_max`", example="1.0", lo=0.05, hi=3600)
    reconnect_max: float = setting(30.0, doc="longest reconnect delay", example="30.0",
                                   lo_field="reconnect_min", hi=86400)

    @property
    def relay(self) -> str:
        return self.relay_name or self.name


def _endpoints(t: Table, key: str, example: str, tx: bool) -> tuple[Endpoint, ...]:
    raw = t.get(key, list, example=example)
    if not raw:
        t.fail(key, "empty: nothing would be opened" if tx else "empty: nowhere to forward",
               f"{key} = {example}")
    out: list[Endpoint] = []
    for item in raw:
        ep = parse_endpoint(item) if isinstance(item, str) else None
        if ep is None:
            t.fail(key, f"{item!r} is not udp://ADDRESS:PORT, tcp://ADDRESS:PORT or "
                   "tls://ADDRESS:PORT", f"{key} = {example}")
            raise AssertionError  # t.fail raised
        if tx:
            try:
                addr = ipaddress.ip_address(ep.host)
            except ValueError:
                t.fail(key, f"{item}: TX binds a listener to an IP address, not a name",
                       "write TX's own OT-side address, e.g. udp://10.0.0.5:514")
                raise AssertionError from None
            if addr.is_unspecified:
                t.fail(key, f"{item}: a wildcard address would listen on every interface",
                       "bind to TX's OT-side address only, e.g. udp://10.0.0.5:514")
        if any(o.transport == ep.transport and o.host == ep.host and o.port == ep.port
               for o in out):
            t.fail(key, f"{item} is listed twice", "list each endpoint once")
        out.append(ep)
    return tuple(out)


def _files(t: Table, keys: tuple[str, ...], used: bool, why: str) -> None:
    for key in keys:
        p = t.path_of(key, None)
        if p is None:
            continue
        if not used:
            t.fail(key, f"set but {why}", "add a tls:// endpoint, or remove the key")
        if not p.is_file():
            t.fail(key, f"file not found: {p}", "point it at an existing PEM file")


def _tx_channel(t: Table) -> TxSyslogChannel:
    listen = _endpoints(t, "listen", '["udp://10.0.0.5:514"]', tx=True)
    tls = any(ep.transport == "tls" for ep in listen)
    _files(t, ("tls_cert_file", "tls_key_file", "tls_client_ca_file"), tls,
           "no listener is tls://")
    ch = read(t, TxSyslogChannel, listen=listen)
    if tls and (ch.tls_cert_file is None or ch.tls_key_file is None):
        t.fail("tls_cert_file", "a tls:// listener needs TX's certificate and key",
               'tls_cert_file = "syslog.crt" and tls_key_file = "syslog.key"')
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        _load(t, ctx, ch.tls_cert_file, ch.tls_key_file, ch.tls_client_ca_file,
              "tls_cert_file", "tls_client_ca_file")
    return ch


def _load(t: Table, ctx: ssl.SSLContext, cert: Path | None, key: Path | None,
          ca: Path | None, cert_key: str, ca_key: str) -> None:
    """Load the PEM files now, so a wrong one is a config error naming its key."""
    try:
        if cert is not None and key is not None:
            ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        t.fail(cert_key, f"cannot load the certificate and its key: {exc}",
               "point tls_cert_file and tls_key_file at a matching PEM certificate and key")
    try:
        if ca is not None:
            ctx.load_verify_locations(str(ca))
    except (OSError, ssl.SSLError) as exc:
        t.fail(ca_key, f"cannot load the CA: {exc}", "point it at a PEM CA certificate")


def _rx_channel(t: Table) -> RxSyslogChannel:
    collectors = _endpoints(t, "collectors", '["tcp://10.1.0.30:601"]', tx=False)
    tls = any(ep.transport == "tls" for ep in collectors)
    _files(t, ("tls_ca_file", "tls_cert_file", "tls_key_file"), tls, "no collector is tls://")
    ch = read(t, RxSyslogChannel, collectors=collectors)
    if (ch.tls_cert_file is None) != (ch.tls_key_file is None):
        t.fail("tls_cert_file", "tls_cert_file and tls_key_file go together",
               "set both or neither")
    if tls:
        _load(t, ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), ch.tls_cert_file, ch.tls_key_file,
              ch.tls_ca_file, "tls_cert_file", "tls_ca_file")
    if ch.relay_header != "none" and not re.fullmatch(r"[!-~]{1,255}", ch.relay):
        t.fail("relay_name", f"{ch.relay!r} cannot go in a syslog header (printable ASCII, no "
               "spaces, at most 255)", 'relay_name = "tx-plant1"')
    return ch


def parse(t: Table, role: str, spooled: bool) -> TxSyslogChannel | RxSyslogChannel:
    """One `[[syslog]]` table; ConfigError names file, key and fix."""
    return _tx_channel(t) if role == "tx" else _rx_channel(t)


def check(tables: list[Table], configs: list[TxSyslogChannel | RxSyslogChannel],
          link: LinkConfig) -> None:
    """No two TX channels may listen on the same port of the same address, and no
    listener may be on TX's side of the one-way link (its `[link] source` or
    `interface_address`): TX listens on the OT side only."""
    seen: dict[tuple[str, str, int], str] = {}
    own = {_normal(a): a for a in link.own_addresses}
    for t, ch in zip(tables, configs, strict=True):
        if not isinstance(ch, TxSyslogChannel):
            continue
        for ep in ch.listen:
            if _normal(ep.host) in own:
                which = "source" if link.source and _normal(link.source) == _normal(ep.host) \
                    else "interface_address"
                t.fail("listen", f"{ep.label} is on the one-way link: {own[_normal(ep.host)]} "
                       f"is TX's [link] {which}, and TX listens on the OT side only",
                       "bind the listener to TX's OT-side address (on its plant network "
                       "interface, not the link's)")
            # UDP and TCP ports are separate; TCP and TLS share the TCP port space
            key = ("udp" if ep.transport == "udp" else "tcp", ep.host, ep.port)
            if key in seen:
                t.fail("listen", f"{ep.label} is also a listener of channel '{seen[key]}'",
                       "give each listener its own port")
            seen[key] = ch.name


def _normal(address: str) -> str:
    """One spelling per address (`fd00:0::5` is `fd00::5`); a name stays as it is."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address
