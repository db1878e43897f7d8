"""TOML configuration -> frozen dataclasses, checked at start.

Every error names the file, the key and the fix, e.g.::

    tx.toml: [mqtt.plant] port: expected an integer 1..65535, got 'abc'. Fix: port = 1883

Unknown keys are errors too (with a did-you-mean), because a typo that is
silently ignored turns into a default nobody chose. Relative paths are taken
relative to the config file's folder.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import ConfigError

T = TypeVar("T")
_REQUIRED: Any = object()




class _Table:
    """One TOML table being read: tracks used keys to report unknown ones."""

    def __init__(self, path: Path, where: str, data: Any) -> None:
        self.path, self.where = path, where
        if not isinstance(data, dict):
            self.fail("", f"expected a table, got {type(data).__name__}", f"write [{where}]")
        self.data: dict[str, Any] = data
        self.used: set[str] = set()

    def fail(self, key: str, problem: str, fix: str) -> None:
        at = f"[{self.where}] {key}".strip() if self.where else key
        raise ConfigError(f"{self.path}: {at}: {problem}. Fix: {fix}")

    def get(self, key: str, typ: type[T], default: Any = _REQUIRED, *, example: str = "",
            lo: float | None = None, hi: float | None = None,
            choices: tuple[Any, ...] = ()) -> T:
        self.used.add(key)
        fix = f"{key} = {example}" if example else f"set {key}"
        if key not in self.data:
            if default is _REQUIRED:
                self.fail(key, "missing", fix)
            return default
        value = self.data[key]
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            self.fail(key, f"expected {typ.__name__}, got {value!r}", fix)
        if choices and value not in choices:
            self.fail(key, f"must be one of {', '.join(map(repr, choices))}, got {value!r}", fix)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            self.fail(key, f"must be between {lo} and {hi}, got {value!r}", fix)
        return value

    def path_of(self, key: str, default: Any = _REQUIRED, example: str = "") -> Path | None:
        raw = self.get(key, str, default, example=example)
        if raw is None:
            return None
        p = Path(raw)
        return p if p.is_absolute() else (self.path.parent / p)

    def credentials(self, password_example: str) -> tuple[str | None, str | None]:
        """username, and password from `password` or `password_file` (not both)."""
        username = self.get("username", str, None, example='"diode"')
        password = self.get("password", str, None, example='"..."')
        password_file = self.path_of("password_file", None, example=password_example)
        if password_file is not None:
            if password is not None:
                self.fail("password_file", "both password and password_file are set",
                          "keep only one of them")
            try:
                password = password_file.read_text().strip()
            except OSError as exc:
                self.fail("password_file", f"cannot read {password_file}: {exc.strerror}",
                          "point it at a readable file")
        return username, password

    def table(self, key: str, required: bool = False) -> _Table:
        self.used.add(key)
        if key not in self.data and required:
            self.fail(key, "missing table", f"add a [{self._sub(key)}] table")
        return _Table(self.path, self._sub(key), self.data.get(key, {}))

    def tables(self, key: str) -> list[_Table]:
        self.used.add(key)
        items = self.data.get(key, [])
        if not isinstance(items, list):
            self.fail(key, "expected an array of tables", f"write [[{self._sub(key)}]]")
        return [_Table(self.path, f"{self._sub(key)}.{i}", item) for i, item in enumerate(items)]

    def _sub(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def done(self) -> None:
        for key in self.data:
            if key not in self.used:
                close = difflib.get_close_matches(key, sorted(self.used), n=1)
                hint = f"did you mean '{close[0]}'?" if close else "remove it"
                self.fail(key, "unknown key", hint)


# -- records ---------------------------------------------------------------------


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


@dataclass(frozen=True)
class LinkConfig:
    """Both ends of the link; each role reads the keys it needs."""
    transport: str            # "udp" | "serial"
    key_file: Path
    link_id: int = 1
    host: str = "127.0.0.1"   # TX: destination; RX: listen address
    port: int = 5600
    source: str | None = None       # TX: source address to bind
    interface: str | None = None    # bind to this network interface
    broadcast: bool = False
    raw_socket: bool | None = None  # TX: send without any bound port (None: when permitted)
    rx_mac: str | None = None       # TX: RX's MAC on `interface` (permanent neighbour)
    interface_address: str | None = None  # "A.B.C.D/P" to put on `interface`
    interface_mtu: int | None = None      # MTU of `interface` (default: mtu + 28, >= 1500)
    serial_port: str = "/dev/ttyAMA0"
    baudrate: int = 115_200
    bitrate: int = 100_000_000      # TX pacing budget, bits per second (UDP)
    mtu: int = 1400
    repeat: int = 3
    interleave: int = 8
    linger: float = 0.002
    heartbeat_interval: float = 1.0
    timeout: float | None = None    # RX: DOWN after this long without a valid frame
                                    # (None: three of TX's heartbeat intervals)
    degraded_loss: float = 0.10
    reorder_timeout: float = 0.5
    loss: float = 0.0               # TX: simulated loss (demo and tests only)
    loss_seed: int = 1


@dataclass(frozen=True)
class SpoolConfig:
    """The encrypted store-and-forward buffer ([spool])."""
    dir: Path
    key: str                  # a key file path, or a systemd credential name
    max_bytes: int = 64 << 20
    fsync: str = "interval"   # "always" | "interval" | "never"
    fsync_interval_ms: float = 50.0  # batched fsync: QoS 1 acks wait up to this long


@dataclass(frozen=True)
class BoardConfig:
    """Status LEDs and watchdogs ([board]); all off by default (a laptop, a test)."""
    leds: str = "none"              # "none" | "gpiod" | "sim"
    profile: str = "auto"           # "auto" | "pi3" | "pi4" | "pi5"
    gpiochip: str | None = None     # override: path, gpiochipN or label
    active_low: bool | None = None
    hardware_watchdog: str | None = None  # e.g. "/dev/watchdog" (systemd's is used when set)
    hardware_watchdog_timeout: int = 15
    watchdog_down_limit: float | None = 300.0  # RX: restart after the link is DOWN this long


@dataclass(frozen=True)
class AgentConfig:
    path: Path
    role: str
    link: LinkConfig
    tx_mqtt: tuple[TxMqttChannel, ...] = ()
    rx_mqtt: tuple[RxMqttChannel, ...] = ()
    status_file: Path | None = None
    status_interval: float = 1.0
    board: BoardConfig = field(default_factory=BoardConfig)
    spool: SpoolConfig | None = None
    tx_opcua: tuple[Any, ...] = ()   # OpcuaSourceConfig (sources/opcua_config.py)
    rx_opcua: tuple[Any, ...] = ()   # OpcuaMirrorConfig (sinks/opcua_mirror.py)
    metrics: tuple[str, int] | None = None  # RX: Prometheus listen address


# -- readers ---------------------------------------------------------------------


def _broker(t: _Table, role: str, name: str) -> BrokerConfig:
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


def _link(t: _Table, role: str) -> LinkConfig:
    transport = t.get("transport", str, "udp", example='"udp"', choices=("udp", "serial"))
    key_file = t.path_of("key_file", example='"link.key"')
    assert key_file is not None
    link = _link_values(t, transport, key_file, role)
    if (role == "tx" and link.transport == "udp" and link.interface and not link.broadcast
            and link.rx_mac is None):
        t.fail("rx_mac", "TX sets up [link] interface but does not know RX's MAC (a one-way "
               "link cannot ask for it with ARP)", 'rx_mac = "dc:a6:32:00:00:02" (on RX: '
               "ip link show <interface>)")
    return link


def _link_values(t: _Table, transport: str, key_file: Path, role: str) -> LinkConfig:
    return LinkConfig(
        transport=transport,
        key_file=key_file,
        link_id=t.get("link_id", int, 1, example="1", lo=0, hi=65535),
        host=t.get("host", str, "127.0.0.1" if role == "tx" else "0.0.0.0",
                   example='"192.0.2.2"'),
        port=t.get("port", int, 5600, example="5600", lo=1, hi=65535),
        source=t.get("source", str, None, example='"192.0.2.1"'),
        interface=t.get("interface", str, None, example='"eth1"'),
        broadcast=t.get("broadcast", bool, False, example="false"),
        raw_socket=t.get("raw_socket", bool, None, example="true"),
        rx_mac=t.get("rx_mac", str, None, example='"dc:a6:32:00:00:02"'),
        interface_address=t.get("interface_address", str, None, example='"192.0.2.1/24"'),
        interface_mtu=t.get("interface_mtu", int, None, example="1500", lo=576, hi=65535),
        serial_port=t.get("serial_port", str, "/dev/ttyAMA0", example='"/dev/ttyAMA0"'),
        baudrate=t.get("baudrate", int, 115_200, example="115200", lo=1200, hi=16_000_000),
        bitrate=t.get("bitrate", int, 100_000_000, example="100000000", lo=9600),
        mtu=t.get("mtu", int, 1400, example="1400", lo=256, hi=65000),
        repeat=t.get("repeat", int, 3, example="3", lo=1, hi=5),
        interleave=t.get("interleave", int, 8, example="8", lo=1, hi=1024),
        linger=t.get("linger", float, 0.002, example="0.002", lo=0.0, hi=1.0),
        heartbeat_interval=t.get("heartbeat_interval", float, 1.0, example="1.0",
                                 lo=0.05, hi=60),
        timeout=t.get("timeout", float, None, example="3.0", lo=0.1, hi=600),
        degraded_loss=t.get("degraded_loss", float, 0.10, example="0.10", lo=0.0, hi=1.0),
        reorder_timeout=t.get("reorder_timeout", float, 0.5, example="0.5", lo=0.001, hi=30),
        loss=t.get("simulated_loss", float, 0.0, example="0.0", lo=0.0, hi=1.0),
        loss_seed=t.get("simulated_loss_seed", int, 1, example="1"),
    )


def _spool(t: _Table) -> SpoolConfig | None:
    if not t.data:
        return None
    key = t.get("key_file", str, example='"spool.key" (or a systemd credential name)')
    if "/" in key or key.endswith(".key"):
        kp = Path(key)
        key = str(kp if kp.is_absolute() else t.path.parent / kp)
    directory = t.path_of("dir", example='"/var/lib/diode/spool"')
    assert directory is not None
    s = SpoolConfig(
        dir=directory, key=key,
        max_bytes=t.get("max_bytes", int, 64 << 20, example="67108864", lo=1 << 20),
        fsync=t.get("fsync", str, "interval", example='"interval"',
                    choices=("always", "interval", "never")),
        fsync_interval_ms=t.get("fsync_interval_ms", float, 50.0, example="50", lo=0,
                                hi=10_000),
    )
    t.done()
    return s


def _tx_channel(t: _Table, spooled: bool) -> TxMqttChannel:
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
    t.done()
    return ch


def _rx_channel(t: _Table) -> RxMqttChannel:
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
    t.done()
    return ch


def _board(t: _Table) -> BoardConfig:
    limit = t.get("watchdog_down_limit", float, 300.0, example="300.0", lo=0)
    b = BoardConfig(
        leds=t.get("leds", str, "none", example='"gpiod"', choices=("none", "gpiod", "sim")),
        profile=t.get("profile", str, "auto", example='"pi4"',
                      choices=("auto", "pi3", "pi4", "pi5")),
        gpiochip=t.get("gpiochip", str, None, example='"pinctrl-bcm2711"'),
        active_low=t.get("active_low", bool, None, example="false"),
        hardware_watchdog=t.get("hardware_watchdog", str, None, example='"/dev/watchdog"'),
        hardware_watchdog_timeout=t.get("hardware_watchdog_timeout", int, 15, example="15",
                                        lo=1, hi=600),
        watchdog_down_limit=limit or None,
    )
    t.done()
    return b


def _opcua(root: _Table, role: str) -> tuple[Any, ...]:
    """[[opcua]] tables: sources on TX, mirrors on RX (parsers live with them, and
    import this module, so they are imported here, not at the top)."""
    tables = root.tables("opcua")
    if not tables:
        return ()  # asyncua is not even imported: it costs an MQTT-only agent ~18 MB
    if role == "tx":
        from agent.opcua.source_config import parse_opcua_source
        out: list[Any] = [parse_opcua_source(t.data, t.path, t.where) for t in tables]
    else:
        from agent.opcua.mirror import parse_opcua_mirror
        out = [parse_opcua_mirror(t.data, t.path, t.where) for t in tables]
        endpoints = [m.endpoint for m in out]
        for t, m in zip(tables, out, strict=True):
            if endpoints.count(m.endpoint) > 1:
                t.fail("endpoint", f"{m.endpoint} is used by two mirrors",
                       "give each [[opcua]] mirror its own port")
    names = [c.name for c in out]
    for t, c in zip(tables, out, strict=True):
        if names.count(c.name) > 1:
            t.fail("name", f"OPC UA name {c.name!r} is used twice", "give each its own name")
    return tuple(out)


def load(path: str | Path, role: str) -> AgentConfig:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found. Fix: pass -c with the path of your "
                          f"{role}.toml (see README, Configuration)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}. Fix: correct the syntax there") \
            from None
    root = _Table(path, "", raw)
    root.get("role", str, role, example=f'"{role}"', choices=(role,))
    lt = root.table("link", required=True)
    link = _link(lt, role)
    lt.done()
    status = root.table("status")
    status_file = status.path_of("file", None, example=f'"/run/diode/{role}.json"')
    status_interval = status.get("interval", float, 1.0, example="1.0", lo=0.1, hi=60)
    status.done()
    board = _board(root.table("board"))
    spool = _spool(root.table("spool"))
    opcua = _opcua(root, role)
    metrics = None
    if role == "rx":
        mt = root.table("metrics")
        listen = mt.get("listen", str, None, example='"0.0.0.0:9108"')
        if listen is not None:
            host, _, port = listen.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                mt.fail("listen", f"expected HOST:PORT, got {listen!r}", 'listen = "0.0.0.0:9108"')
            metrics = (host, int(port))
        mt.done()
    channels = root.tables("mqtt")
    names = [c.get("name", str, example='"plant"') for c in channels]
    for c, n in zip(channels, names, strict=True):
        if names.count(n) > 1:
            c.fail("name", f"channel name {n!r} is used twice", "give each [[mqtt]] its own name")
    if role == "tx":
        cfg = AgentConfig(path, role, link,
                          tx_mqtt=tuple(_tx_channel(c, spool is not None) for c in channels),
                          status_file=status_file, status_interval=status_interval,
                          board=board, spool=spool, tx_opcua=opcua)
    else:
        cfg = AgentConfig(path, role, link, rx_mqtt=tuple(_rx_channel(c) for c in channels),
                          status_file=status_file, status_interval=status_interval,
                          board=board, spool=spool, metrics=metrics, rx_opcua=opcua)
    root.done()
    return cfg
