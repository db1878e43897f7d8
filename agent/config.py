"""TOML configuration -> frozen dataclasses, checked at start.

Every error names the file, the key and the fix, e.g.::

    tx.toml: [link] port: expected int, got 'abc'. Fix: port = 5600

Unknown keys are errors too (with a did-you-mean), because a typo that is
silently ignored turns into a default nobody chose. Relative paths are taken
relative to the config file's folder.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config_reader import Table, read, setting
from agent.errors import ConfigError
from agent.link.sender import SenderParams

__all__ = ["AgentConfig", "BoardConfig", "ConfigError", "LinkConfig", "MetricsConfig",
           "SpoolConfig", "StatusConfig", "load"]


# -- records ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LinkConfig:
    """`[link]`, both sides; each role reads the keys it needs."""
    transport: str = setting("udp", doc='`"udp"` or `"serial"`', example='"udp"',
                             choices=("udp", "serial"))
    key_file: Path = setting(doc="the link key, `diode keygen -o FILE` (mode 0600; refused "
                             "if others can read it)", example='"link.key"')
    link_id: int = setting(1, doc="must match on both sides", example="1", lo=0, hi=65535)
    host: str = setting("127.0.0.1", doc="TX: destination; RX: listen address",
                        example='"192.0.2.2"', default_doc="TX `127.0.0.1`, RX `0.0.0.0`")
    port: int = setting(5600, doc="UDP port", example="5600", lo=1, hi=65535)
    source: str | None = setting(None, doc="TX: source address to bind", example='"192.0.2.1"')
    interface: str | None = setting(None, doc="bind to this network interface (and set it up: "
                                    "README, One-way Ethernet)", example='"eth1"')
    broadcast: bool = setting(False, doc="TX: send to a broadcast address", example="false")
    raw_socket: bool | None = setting(None, doc="TX: send from a raw socket with no bound port "
                                      "(unset: when permitted)", example="true")
    rx_mac: str | None = setting(None, doc="TX: RX's MAC on `interface` (a permanent "
                                 "neighbour; a one-way link cannot ARP)",
                                 example='"dc:a6:32:00:00:02"')
    interface_address: str | None = setting(None, doc="`A.B.C.D/P` to put on `interface`",
                                            example='"192.0.2.1/24"')
    interface_mtu: int | None = setting(None, doc="MTU of `interface` (unset: `mtu` + 28, at "
                                        "least 1500)", example="1500", lo=576, hi=65535)
    serial_port: str = setting("/dev/ttyAMA0", doc="serial transport (8N1; frames are "
                               "COBS-stuffed with a CRC-32)", example='"/dev/ttyAMA0"')
    baudrate: int = setting(115_200, doc="serial line rate", example="115200", lo=1200,
                            hi=16_000_000)
    bitrate: int = setting(100_000_000, doc="TX pacing budget in bit/s (UDP; serial paces to "
                           "the baud rate)", example="100000000", lo=9600, hi=100_000_000_000)
    mtu: int = setting(1400, doc="datagram size", example="1400", lo=256, hi=65000)
    repeat: int = setting(3, doc="copies of each frame", example="3", lo=1, hi=5)
    interleave: int = setting(8, doc="spacing of the copies, in datagrams", example="8", lo=1,
                              hi=1024)
    linger: float = setting(0.002, doc="TX: seconds a half-full frame waits for more records",
                            example="0.002", lo=0.0, hi=1.0)
    heartbeat_interval: float = setting(1.0, doc="TX heartbeat period, seconds", example="1.0",
                                        lo=0.05, hi=60)
    recovery_window: float = setting(
        60.0, doc="TX: seconds of sent frames kept and sent again in the link's spare time, so "
        "an RX down for less (a restart, a board swap) misses nothing (0: off)",
        example="60.0", lo=0.0, hi=3600.0)
    recovery_max_bytes: int = setting(16 << 20, doc="TX: most bytes the recovery window "
                                      "keeps (the oldest frames leave first)",
                                      example="16777216", lo=0, hi=1 << 32)
    recovery_share: float = setting(0.1, doc="TX: most of the link's bit rate the re-sends "
                                    "of the recovery window take (only when the link has room)",
                                    example="0.1", lo=0.001, hi=1.0)
    timeout: float | None = setting(None, doc="RX watchdog: DOWN after this many seconds "
                                    "without a valid frame", example="3.0", lo=0.1, hi=600,
                                    default_doc="3 of TX's heartbeat intervals")
    degraded_loss: float = setting(0.10, doc="RX: DEGRADED above this datagram loss",
                                   example="0.10", lo=0.0, hi=1.0)
    reorder_timeout: float | None = setting(
        None, doc="RX: seconds a gap is waited for", example="0.5", lo=0.001, hi=60,
        default_doc="1.5 times the time the copies of a frame span at the link's rate, at "
        "least 0.5 (115200 baud, repeat 3, interleave 8: about 3 s)")
    state_file: Path | None = setting(
        None, doc="RX: the epochs it followed, kept so that replays stay replays across "
        "restarts ([docs/link-replays.md](docs/link-replays.md))",
        example='"/var/lib/diode/link-state.json"',
        default_doc="unset (boards: `/var/lib/diode/link-state.json`)")
    loss: float = setting(0.0, doc="TX: simulated datagram loss (demo and tests only)",
                          example="0.0", lo=0.0, hi=1.0, toml="simulated_loss")
    loss_seed: int = setting(1, doc="TX: seed of the simulated loss", example="1",
                             toml="simulated_loss_seed")

    @property
    def own_addresses(self) -> tuple[str, ...]:
        """TX's own addresses on the one-way link, as far as the config names them: the
        `source` it binds and the address of `interface_address` (UDP; serial has none)."""
        if self.transport != "udp":
            return ()
        found = [self.source] if self.source else []
        if self.interface_address:
            found.append(self.interface_address.split("/", 1)[0])
        return tuple(found)

    @property
    def line_bits_per_second(self) -> float:
        """What the link carries: the baud rate in 8N1 bytes on serial, else `bitrate`."""
        return self.baudrate * 8 / 10 if self.transport == "serial" else float(self.bitrate)

    @property
    def gap_wait(self) -> float:
        """How long RX waits for a missing frame: `reorder_timeout`, or derived from how far
        apart the copies of one frame go out. They are `interleave` datagrams apart (or a
        sender tick each, when traffic is light), `repeat - 1` times: at 115200 baud a
        frame's last copy comes about 2 s after its first, past a fixed 0.5 s."""
        if self.reorder_timeout is not None:
            return self.reorder_timeout
        datagram_s = (self.mtu + 64) * 8 / self.line_bits_per_second
        span = (self.repeat - 1) * self.interleave * max(datagram_s, SenderParams().tick)
        return max(0.5, 1.5 * span)


@dataclass(frozen=True, kw_only=True)
class SpoolConfig:
    """`[spool]`: the encrypted store-and-forward buffers, one folder per channel."""
    dir: Path = setting(doc="on the board's writable data partition; a folder per channel",
                        example='"/var/lib/diode/spool"')
    key: str = setting(doc="`diode keygen -o spool.key` (not the link key), or a systemd "
                       "credential name", example='"spool.key"', toml="key_file", manual=True)
    max_bytes: int = setting(64 << 20, doc="bound of each channel's spool", example="67108864",
                             lo=1 << 20)
    fsync: str = setting("interval", doc='`"always"`, `"interval"` or `"never"` (tests only)',
                         example='"interval"', choices=("always", "interval", "never"))
    fsync_interval_ms: float = setting(50.0, doc="batched fsync: QoS 1 acknowledgements wait "
                                       "up to this long", example="50", lo=0, hi=10_000)


@dataclass(frozen=True, kw_only=True)
class BoardConfig:
    """`[board]`: status LEDs and watchdogs; all off by default (a laptop, a test)."""
    leds: str = setting("none", doc='`"none"`, `"gpiod"` or `"sim"`', example='"gpiod"',
                        choices=("none", "gpiod", "sim"))
    profile: str = setting("auto", doc="pin map: `auto`, `pi3`, `pi4`, `pi5`", example='"pi4"',
                           choices=("auto", "pi3", "pi4", "pi5"))
    gpiochip: str | None = setting(None, doc="override the chip: path, gpiochipN or label",
                                   example='"pinctrl-bcm2711"')
    active_low: bool | None = setting(None, doc="override the profile's LED polarity",
                                      example="false")
    hardware_watchdog: str | None = setting(None, doc="e.g. `/dev/watchdog` (systemd's is used "
                                            "when set)", example='"/dev/watchdog"')
    hardware_watchdog_timeout: int = setting(15, doc="seconds (at most 15 on a BCM2835)",
                                             example="15", lo=1, hi=600)
    watchdog_down_limit: float | None = setting(300.0, doc="RX: stop petting after the link is "
                                                "DOWN this long (0: never)", example="300.0",
                                                lo=0, manual=True)


@dataclass(frozen=True, kw_only=True)
class StatusConfig:
    """`[status]`: the state file `diode status` reads."""
    file: Path | None = setting(None, doc="where the agent writes its state", example='"/run/'
                                'diode/rx.json"')
    interval: float = setting(1.0, doc="seconds between writes", example="1.0", lo=0.1, hi=60)


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    """`[metrics]`, RX only: Prometheus metrics for IT monitoring."""
    listen: str | None = setting(None, doc="`HOST:PORT` to serve `/metrics` on",
                                 example='"0.0.0.0:9108"')


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
    link = read(t, LinkConfig, {"host": "127.0.0.1" if role == "tx" else "0.0.0.0"})
    if (role == "tx" and link.transport == "udp" and link.interface and not link.broadcast
            and link.rx_mac is None):
        t.fail("rx_mac", "TX sets up [link] interface but does not know RX's MAC (a one-way "
               "link cannot ask for it with ARP)", 'rx_mac = "dc:a6:32:00:00:02" (on RX: '
               "ip link show <interface>)")
    return link


def _spool(t: Table) -> SpoolConfig | None:
    if not t.data:
        return None
    key = t.get("key_file", str, example='"spool.key" (or a systemd credential name)')
    if "/" in key or key.endswith(".key"):
        kp = Path(key)
        key = str(kp if kp.is_absolute() else t.path.parent / kp)
    spool = read(t, SpoolConfig, key=key)
    if spool.dir.exists() and not spool.dir.is_dir():
        t.fail("dir", f"{spool.dir} is a file, not a folder",
               "point dir at a folder on the data partition (it is created if missing)")
    return spool


def _board(t: Table) -> BoardConfig:
    limit = t.get("watchdog_down_limit", float, 300.0, example="300.0", lo=0)
    return read(t, BoardConfig, watchdog_down_limit=limit or None)


def _check_writable(t: Table, key: str, path: Path) -> None:
    """A file the agent will write: its folder exists and is writable, or can be made."""
    if path.is_dir():
        t.fail(key, f"{path} is a folder", f'{key} = "{path / "status.json"}"')
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK) \
            or (path.exists() and not os.access(path, os.W_OK)):
        t.fail(key, f"{path} cannot be written by this user",
               f"point {key} at a writable place (on a board /run/diode/), or fix the "
               "permissions")


def _metrics(t: Table) -> tuple[str, int] | None:
    listen = read(t, MetricsConfig).listen
    if listen is None:
        return None
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        t.fail("listen", f"expected HOST:PORT, got {listen!r}", 'listen = "0.0.0.0:9108"')
    return host, int(port)


def _channels(root: Table, role: str, spooled: bool,
              link: LinkConfig) -> dict[str, tuple[Any, ...]]:
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
        adapter.check(tables, configs, link)
        out[adapter.name] = tuple(configs)
    return out


def load(path: str | Path, role: str) -> AgentConfig:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}). Fix: save the file as "
                          "UTF-8") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder. Fix: pass -c with the path of your "
                          f"{role}.toml") from None
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
    st = root.table("status")
    status = read(st, StatusConfig)
    if status.file is not None:
        _check_writable(st, "file", status.file)
    st.done()
    bt = root.table("board")
    board = _board(bt)
    bt.done()
    sp = root.table("spool")
    spool = _spool(sp)
    sp.done()
    metrics = None
    if role == "rx":
        mt = root.table("metrics")
        metrics = _metrics(mt)
        mt.done()
    channels = _channels(root, role, spool is not None, link)
    root.done()
    return AgentConfig(path, role, link, channels, status_file=status.file,
                       status_interval=status.interval, board=board, spool=spool,
                       metrics=metrics)
