"""TOML configuration -> frozen dataclasses, checked at start.

Every error names the file, the key and the fix, e.g.::

    tx.toml: [link] port: expected int, got 'abc'. Fix: port = 5600

Unknown keys are errors too (with a did-you-mean), because a typo that is
silently ignored turns into a default nobody chose. Relative paths are taken
relative to the config file's folder.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config_reader import Table
from agent.errors import ConfigError

__all__ = ["AgentConfig", "BoardConfig", "ConfigError", "LinkConfig", "SpoolConfig", "load"]


# -- records ---------------------------------------------------------------------


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
    # protocol name (agent/protocols.py) -> its channels' configs, in file order
    channels: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    status_file: Path | None = None
    status_interval: float = 1.0
    board: BoardConfig = field(default_factory=BoardConfig)
    spool: SpoolConfig | None = None
    metrics: tuple[str, int] | None = None  # RX: Prometheus listen address

    def spool_dir(self, channel: str) -> Path | None:
        """A channel's own spool folder, so one channel's backlog never holds back another."""
        return None if self.spool is None else self.spool.dir / channel


# -- readers ---------------------------------------------------------------------


def _link(t: Table, role: str) -> LinkConfig:
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


def _link_values(t: Table, transport: str, key_file: Path, role: str) -> LinkConfig:
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


def _spool(t: Table) -> SpoolConfig | None:
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


def _board(t: Table) -> BoardConfig:
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


def _channels(root: Table, role: str, spooled: bool) -> dict[str, tuple[Any, ...]]:
    """Every protocol's [[name]] tables, each read by its adapter."""
    from agent.protocols import ADAPTERS
    out: dict[str, tuple[Any, ...]] = {}
    for adapter in ADAPTERS:
        tables = root.tables(adapter.name)
        names = [t.get("name", str, example='"plant"') for t in tables]
        for t, n in zip(tables, names, strict=True):
            if names.count(n) > 1:
                t.fail("name", f"channel name {n!r} is used twice",
                       f"give each [[{adapter.name}]] its own name")
        configs = []
        for t in tables:
            configs.append(adapter.parse(t, role, spooled))
            t.done()
        adapter.check(tables, configs)
        out[adapter.name] = tuple(configs)
    return out


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
    root = Table(path, "", raw)
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
    channels = _channels(root, role, spool is not None)
    root.done()
    return AgentConfig(path, role, link, channels, status_file=status_file,
                       status_interval=status_interval, board=board, spool=spool,
                       metrics=metrics)
