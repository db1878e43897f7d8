"""Configuration of the MQTT channels: `[[mqtt]]` tables of tx.toml and rx.toml.

On TX each channel is one OT broker connection and its topic filters; on RX the
channel of the same name republishes to one IT broker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.config_reader import Table


@dataclass(frozen=True)
class TlsConfig:
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None
    verify_hostname: bool = True


@dataclass(frozen=True)
class BrokerConfig:
    host: str
    port: int
    protocol: str  # "5" or "3.1.1"
    client_id: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TlsConfig | None = None
    keepalive: int = 30
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class TxMqttChannel:
    name: str
    broker: BrokerConfig
    topics: tuple[str, ...]
    qos: int = 1
    queue_limit: int = 100_000
    carousel_period: float = 60.0
    carousel_share: float = 0.1
    overflow: str = "drop-oldest"   # spool full: "drop-oldest" (events) | "conflate"
    session_expiry: int = 0         # >0: a lasting broker session (set with a spool)


@dataclass(frozen=True)
class RxMqttChannel:
    name: str
    broker: BrokerConfig
    topic_prefix: str = ""
    topic_rewrite: tuple[tuple[str, str], ...] = ()
    status_topic: str = ""
    queue_limit: int = 100_000


def _broker(t: Table, role: str, name: str) -> BrokerConfig:
    protocol = t.get("protocol", str, "5", example='"5"', choices=("5", "3.1.1"))
    username, password = t.credentials('"mqtt.pass"')
    tls = None
    if t.get("tls", bool, False, example="true"):
        verify = t.get("tls_verify_hostname", bool, True, example="true")
        tls = TlsConfig(t.path_of("ca_file", None, '"ca.crt"'), t.path_of("cert_file", None,
                        '"client.crt"'), t.path_of("key_file", None, '"client.key"'), verify)
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
    lo = t.get("reconnect_min", float, 1.0, example="1.0", lo=0.05, hi=3600)
    return BrokerConfig(
        host=t.get("host", str, "127.0.0.1", example='"127.0.0.1"'),
        port=t.get("port", int, 8883 if tls else 1883, example="1883", lo=1, hi=65535),
        protocol=protocol,
        client_id=t.get("client_id", str, f"diode-{role}-{name}", example=f'"diode-{role}"'),
        username=username, password=password, tls=tls,
        keepalive=t.get("keepalive", int, 30, example="30", lo=5, hi=3600),
        reconnect_min=lo,
        reconnect_max=t.get("reconnect_max", float, 60.0, example="60.0", lo=lo, hi=86400),
    )


def _tx_channel(t: Table, spooled: bool) -> TxMqttChannel:
    name = t.get("name", str, example='"plant"')
    topics = t.get("topics", list, ["#"], example='["plant/#"]')
    if not topics or not all(isinstance(x, str) and x for x in topics):
        t.fail("topics", "expected a non-empty list of topic filters", 'topics = ["#"]')
    ch = TxMqttChannel(
        name=name, broker=_broker(t, "tx", name), topics=tuple(topics),
        qos=t.get("qos", int, 1, example="1", choices=(0, 1, 2)),
        queue_limit=t.get("queue_limit", int, 100_000, example="100000", lo=1),
        carousel_period=t.get("carousel_period", float, 60.0, example="60.0", lo=0.1),
        carousel_share=t.get("carousel_share", float, 0.1, example="0.1", lo=0.001, hi=1.0),
        overflow=t.get("overflow", str, "drop-oldest", example='"conflate"',
                       choices=("drop-oldest", "conflate")),
        session_expiry=t.get("session_expiry", int, 3600 if spooled else 0, example="3600",
                             lo=0),
    )
    return ch


def _rx_channel(t: Table) -> RxMqttChannel:
    name = t.get("name", str, example='"plant"')
    rewrite = t.get("topic_rewrite", list, [], example='[["plant/", "site1/"]]')
    if not all(isinstance(r, list) and len(r) == 2 and all(isinstance(x, str) for x in r)
               for r in rewrite):
        t.fail("topic_rewrite", "expected a list of [from, to] prefix pairs",
               'topic_rewrite = [["plant/", "site1/"]]')
    ch = RxMqttChannel(
        name=name, broker=_broker(t, "rx", name),
        topic_prefix=t.get("topic_prefix", str, "", example='"ot/"'),
        topic_rewrite=tuple((a, b) for a, b in rewrite),
        status_topic=t.get("status_topic", str, f"diode/status/{name}",
                           example=f'"diode/status/{name}"'),
        queue_limit=t.get("queue_limit", int, 100_000, example="100000", lo=1),
    )
    return ch


def parse(t: Table, role: str, spooled: bool) -> TxMqttChannel | RxMqttChannel:
    """One `[[mqtt]]` table; ConfigError names file, key and fix."""
    return _tx_channel(t, spooled) if role == "tx" else _rx_channel(t)
