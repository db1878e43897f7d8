"""Configuration of the MQTT channels: `[[mqtt]]` tables of tx.toml and rx.toml.

On TX each channel is one OT broker connection and its topic filters; on RX the
channel of the same name republishes to one IT broker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.config_reader import Table, read, setting
from agent.mqtt import topics


@dataclass(frozen=True)
class TlsConfig:
    ca_file: Path | None = setting(None, doc="TLS: the CA to verify the broker with (unset: the "
                                   "system CAs)", example='"ca.crt"')
    cert_file: Path | None = setting(None, doc="mutual TLS: this client's certificate (with "
                                     "`key_file`)", example='"client.crt"')
    key_file: Path | None = setting(None, doc="mutual TLS: this client's key",
                                    example='"client.key"')
    verify_hostname: bool = setting(True, doc="turning it off logs a warning at every start",
                                    example="true", toml="tls_verify_hostname")


@dataclass(frozen=True)
class BrokerConfig:
    host: str = setting("127.0.0.1", doc="the broker", example='"127.0.0.1"')
    port: int = setting(1883, doc="the broker's port", example="1883", lo=1, hi=65535,
                        default_doc="`1883` (`8883` with TLS)")
    protocol: str = setting("5", doc='`"5"` or `"3.1.1"`', example='"5"', choices=("5", "3.1.1"))
    client_id: str = setting("", doc="unique per broker", example='"diode-tx-plant"',
                             default_doc="`diode-<role>-<name>`")
    username: str | None = setting(None, doc="user name", example='"diode"', manual=True)
    password: str | None = setting(None, doc="its password, or a file holding it (not both)",
                                   example='"..."', manual=True, secret=True,
                                   label="`password` or `password_file`")
    tls: TlsConfig | None = setting(None, doc="TLS to the broker (verification on)",
                                    example="true", manual=True, default_doc="`false`")
    keepalive: int = setting(30, doc="seconds", example="30", lo=5, hi=3600)
    reconnect_min: float = setting(1.0, doc="first reconnect delay; it doubles up to "
                                   "`reconnect_max`", example="1.0", lo=0.05, hi=3600)
    reconnect_max: float = setting(60.0, doc="longest reconnect delay", example="60.0",
                                   lo_field="reconnect_min", hi=86400)

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"


# The largest payload a channel carries unless configured: big enough for images and
# JSON documents, small enough that a spool segment holds several.
MAX_MESSAGE_SIZE = 1 << 20
# What a spooled or framed message adds to its payload at most: the topic (up to
# 65,535 bytes, twice when it is also the spool's conflation key), v5 properties
# (bounded here, not by MQTT) and the record's own fields.
RECORD_OVERHEAD = 2 * 65_535 + 64 * 1024 + 1024


@dataclass(frozen=True)
class _MqttChannel:
    """The keys both sides read, declared once."""
    name: str = setting(doc="channel name: a TX channel goes to the RX channel of the same name",
                        example='"plant"')
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    queue_limit: int = setting(100_000, doc="messages held while the link (TX) or the IT "
                               "broker (RX) is slower; overflow is counted", example="100000",
                               lo=1)
    max_message_size: int = setting(
        MAX_MESSAGE_SIZE, doc="largest payload carried, in bytes (set it alike on both sides). "
        "A larger one is refused on TX: counted (`too_large`), logged with its topic, and "
        "acknowledged to the OT broker so it is not redelivered; spool segments are sized "
        "to hold one", example="1048576", lo=1, hi=256 << 20)

    @property
    def largest_record(self) -> int:
        """Bytes a queued, spooled or framed message of this channel may take."""
        return self.max_message_size + RECORD_OVERHEAD


@dataclass(frozen=True)
class TxMqttChannel(_MqttChannel):
    topics: tuple[str, ...] = setting(("#",), doc="topic filters to subscribe; overlapping "
                                      "ones are refused (the broker would deliver a message "
                                      "once per matching filter)", example='["plant/#"]')
    qos: int = setting(1, doc="subscription QoS", example="1", choices=(0, 1, 2))
    carousel_period: float = setting(60.0, doc="seconds between re-sends of the retained state",
                                     example="60.0", lo=0.1)
    carousel_share: float = setting(0.1, doc="share of the link the re-sends may use",
                                    example="0.1", lo=0.001, hi=1.0)
    tombstone_period: float = setting(3600.0, doc="seconds a cleared retained topic is still "
                                      "re-sent as a deletion, so an RX that was down or lost "
                                      "the clear clears it on IT too", example="3600", lo=0)
    overflow: str = setting("drop-oldest", doc='spool full: `"drop-oldest"` (events) or '
                            '`"conflate"` (keep each topic\'s latest first)', example='"conflate"',
                            choices=("drop-oldest", "conflate"))
    session_expiry: int = setting(0, doc="seconds the OT broker keeps TX's session (and what "
                                  "TX has not acknowledged)", example="3600", lo=0,
                                  default_doc="`3600` with a `[spool]`, else `0`")


@dataclass(frozen=True)
class RxMqttChannel(_MqttChannel):
    topic_prefix: str = setting("", doc="put before every topic", example='"ot/"')
    topic_rewrite: tuple[tuple[str, str], ...] = setting(
        (), doc="`[from, to]` topic prefix pairs, the first match applies",
        example='[["plant/", "site1/"]]', manual=True, default_doc="`[]`")
    status_topic: str = setting("", doc='retained JSON status; `""` for none',
                                example='"diode/status/plant"',
                                default_doc="`diode/status/<name>`")


def _broker(t: Table, role: str, name: str) -> BrokerConfig:
    username, password = t.credentials('"mqtt.pass"')
    tls = None
    if t.get("tls", bool, False, example="true"):
        tls = read(t, TlsConfig)
        if (tls.cert_file is None) != (tls.key_file is None):
            t.fail("cert_file", "cert_file and key_file go together", "set both or neither")
        for key, p in (("ca_file", tls.ca_file), ("cert_file", tls.cert_file),
                       ("key_file", tls.key_file)):
            if p is not None and not p.is_file():
                t.fail(key, f"file not found: {p}", "point it at an existing PEM file")
    else:
        for key in ("ca_file", "cert_file", "key_file", "tls_verify_hostname"):
            if key in t.data:
                t.fail(key, "set but tls is off", "add tls = true, or remove the key")
    return read(t, BrokerConfig, {"port": 8883 if tls else 1883,
                                  "client_id": f"diode-{role}-{name}"},
                username=username, password=password, tls=tls)


def _tx_channel(t: Table, spooled: bool) -> TxMqttChannel:
    name = t.get("name", str, example='"plant"')
    ch = read(t, TxMqttChannel, {"session_expiry": 3600 if spooled else 0},
              broker=_broker(t, "tx", name))
    _check_filters(t, ch.topics)
    return ch


def _check_filters(t: Table, filters: tuple[str, ...]) -> None:
    """Valid filters, and no two that match the same topic: the broker would deliver
    such a message once per matching filter, and IT would see it as many times."""
    for f in filters:
        problem = topics.filter_problem(f)
        if problem:
            t.fail("topics", f"{f!r} is not a valid MQTT topic filter: {problem}",
                   'write filters like "plant/#" or "plant/+/temp"')
    for i, a in enumerate(filters):
        for b in filters[i + 1:]:
            if a == b:
                t.fail("topics", f"{a!r} is listed twice", "list each filter once")
            if topics.covers(a, b) or topics.covers(b, a):
                wide, narrow = (a, b) if topics.covers(a, b) else (b, a)
                t.fail("topics", f"{wide!r} covers {narrow!r}: the broker would deliver "
                       f"every message of {narrow!r} twice, and IT would see it twice",
                       f"drop {narrow!r} (keep {wide!r})")
            if topics.overlap(a, b):
                t.fail("topics", f"{a!r} and {b!r} overlap (both match e.g. "
                       f"{topics.example_common(a, b)!r}): the broker would deliver such a "
                       "message once per filter, and IT would see it twice",
                       "make the filters disjoint, or replace them by one that covers both")


def _rx_channel(t: Table) -> RxMqttChannel:
    name = t.get("name", str, example='"plant"')
    rewrite = t.get("topic_rewrite", list, [], example='[["plant/", "site1/"]]')
    if not all(isinstance(r, list) and len(r) == 2 and all(isinstance(x, str) for x in r)
               for r in rewrite):
        t.fail("topic_rewrite", "expected a list of [from, to] prefix pairs",
               'topic_rewrite = [["plant/", "site1/"]]')
    ch = read(t, RxMqttChannel, {"status_topic": f"diode/status/{name}"},
              broker=_broker(t, "rx", name), topic_rewrite=tuple((a, b) for a, b in rewrite))
    for key, text in (("topic_prefix", ch.topic_prefix), ("status_topic", ch.status_topic),
                      *(("topic_rewrite", new) for _, new in ch.topic_rewrite)):
        if "+" in text or "#" in text:
            t.fail(key, f"{text!r} holds a wildcard (+ or #): no broker takes a PUBLISH to it",
                   "use plain topic levels")
    return ch


def parse(t: Table, role: str, spooled: bool) -> TxMqttChannel | RxMqttChannel:
    """One `[[mqtt]]` table; ConfigError names file, key and fix."""
    return _tx_channel(t, spooled) if role == "tx" else _rx_channel(t)
