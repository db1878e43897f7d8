"""Watchdogs: sd_notify over a real unix datagram socket, the health gate, /dev/watchdog (simulated).

systemd's side of the protocol is a datagram socket that reads
newline-separated assignments; these tests bind one (path and abstract
namespace) and read what the agent would tell systemd.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.board import watchdog
from agent.board.watchdog import (
    BCM2835_MAX_TIMEOUT,
    HardwareWatchdog,
    LinkDownCheck,
    Liveness,
    SimulatedWatchdog,
    SystemdNotifier,
    SystemdWatchdog,
    WatchdogError,
    WatchdogPetter,
    notify_address,
    rx_health,
    systemd_watchdog_timeout,
    tx_health,
)
from agent.link.health import LinkState


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class NotifyServer:
    """systemd's end: a unix datagram socket that collects what was sent."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock, self.env_value = sock, env_value
        sock.settimeout(2.0)

    def recv(self) -> str:
        return self.sock.recv(4096).decode()

    def pending(self) -> list[str]:
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                out.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(2.0)
        return out


@pytest.fixture
def notify_path() -> Iterator[NotifyServer]:
    # A short directory: AF_UNIX paths are limited to 107 bytes, pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="wd-") as d:
        path = os.path.join(d, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        with contextlib.closing(sock):
            yield NotifyServer(sock, path)


@pytest.fixture
def notify_abstract() -> Iterator[NotifyServer]:
    name = f"diode-test-{os.getpid()}-{os.urandom(4).hex()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    with contextlib.closing(sock):
        yield NotifyServer(sock, "@" + name)


# -- sd_notify ---------------------------------------------------------------------------


def test_notify_address() -> None:
    assert notify_address("@foo") == "\0foo"
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    with pytest.raises(WatchdogError, match="path or an @abstract"):
        notify_address("vsock:2:1234")


@pytest.mark.parametrize("server_fixture", ["notify_path", "notify_abstract"])
def test_notifier_reaches_systemd_socket(server_fixture: str, request: pytest.FixtureRequest,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    server: NotifyServer = request.getfixturevalue(server_fixture)
    monkeypatch.setenv("NOTIFY_SOCKET", server.env_value)
    n = SystemdNotifier.from_env()
    assert n.enabled
    assert n.ready("listening on udp 0.0.0.0:5600")
    assert server.recv() == "READY=1\nSTATUS=listening on udp 0.0.0.0:5600"
    assert n.status("link UP\nsecond line")
    assert server.recv() == "STATUS=link UP second line"
    assert n.watchdog()
    assert server.recv() == "WATCHDOG=1"
    assert n.stopping()
    assert server.recv() == "STOPPING=1"
    n.close()


def test_notifier_without_systemd_is_a_quiet_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = SystemdNotifier.from_env()
    assert not n.enabled
    assert not n.ready() and not n.watchdog()


def test_notifier_survives_a_missing_socket(caplog: pytest.LogCaptureFixture) -> None:
    n = SystemdNotifier("/nonexistent/notify")
    assert not n.watchdog()
    assert not n.watchdog()
    assert n.errors == 2
    assert sum("systemd notify" in r.message for r in caplog.records) == 1  # logged once, not per pet


# -- WATCHDOG_USEC -------------------------------------------------------------------------


def test_watchdog_usec() -> None:
    assert systemd_watchdog_timeout({}) is None
    assert systemd_watchdog_timeout({"WATCHDOG_USEC": "20000000"}) == 20.0
    assert systemd_watchdog_timeout({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}) == 20.0
    # meant for another process (we inherited the environment): not ours to pet
    assert systemd_watchdog_timeout({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}) is None
    with pytest.raises(WatchdogError):
        systemd_watchdog_timeout({"WATCHDOG_USEC": "0"})


def test_petter_pets_at_half_of_watchdog_usec(notify_path: NotifyServer) -> None:
    env = {"NOTIFY_SOCKET": notify_path.env_value, "WATCHDOG_USEC": "20000000"}
    target = SystemdWatchdog.from_env(env=env)
    assert target is not None and target.timeout == 20.0
    assert WatchdogPetter([target], lambda: None).interval == 10.0
    # with a hardware watchdog beside it, the tighter one sets the pace
    hw = SimulatedWatchdog(timeout=15.0)
    assert WatchdogPetter([target, hw], lambda: None).interval == 7.5
    assert SystemdWatchdog.from_env(env={"NOTIFY_SOCKET": notify_path.env_value}) is None
    assert SystemdWatchdog.from_env(env={"WATCHDOG_USEC": "20000000"}) is None


def test_pets_stop_while_unhealthy_and_resume(notify_path: NotifyServer) -> None:
    notifier = SystemdNotifier(notify_path.env_value)
    problem: list[str | None] = [None]
    petter = WatchdogPetter([SystemdWatchdog(notifier, 20.0)], lambda: problem[0])
    assert petter.tick()
    assert notify_path.pending() == ["WATCHDOG=1"]
    problem[0] = "no send for 6.0 s (limit 5 s)"
    assert not petter.tick()
    assert notify_path.pending() == [
        "STATUS=unhealthy, not petting the watchdog: no send for 6.0 s (limit 5 s)"]
    assert not petter.tick()
    assert notify_path.pending() == []  # no pet, and the status is told once
    problem[0] = None
    assert petter.tick()
    assert notify_path.pending() == ["STATUS=running", "WATCHDOG=1"]
    assert (petter.pets, petter.skipped) == (2, 2)


def test_a_check_that_raises_counts_as_unhealthy() -> None:
    sim = SimulatedWatchdog(10.0)

    def broken() -> str | None:
        raise RuntimeError("boom")

    petter = WatchdogPetter([sim], broken)
    assert not petter.tick()
    assert sim.pets == [] and sim.reports == ["health check raised RuntimeError: boom"]


def test_petter_runs_on_the_loop_over_a_real_socket(notify_path: NotifyServer) -> None:
    """WATCHDOG_USEC=0.2 s: pets every 0.1 s while healthy, none while unhealthy."""
    env = {"NOTIFY_SOCKET": notify_path.env_value, "WATCHDOG_USEC": "200000"}
    target = SystemdWatchdog.from_env(env=env)
    assert target is not None
    healthy = [True]
    petter = WatchdogPetter([target], lambda: None if healthy[0] else "link DOWN for 301 s (limit 300 s)")
    assert petter.interval == pytest.approx(0.1)

    async def main() -> tuple[list[str], list[str]]:
        task = asyncio.create_task(petter.run())
        await asyncio.sleep(0.35)
        first = notify_path.pending()
        healthy[0] = False
        await asyncio.sleep(0.12)  # the next tick sees it
        notify_path.pending()
        await asyncio.sleep(0.35)
        second = notify_path.pending()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return first, second

    first, second = asyncio.run(main())
    assert first.count("WATCHDOG=1") >= 2
    assert "WATCHDOG=1" not in second


# -- health checks --------------------------------------------------------------------------


def test_liveness() -> None:
    clock = FakeClock()
    live = Liveness({"send": 5.0}, clock)
    check = tx_health(live)
    clock.t += 4.9
    assert check() is None  # start-up grace
    clock.t += 0.2
    assert check() == "no send for 5.1 s (limit 5 s)"
    live.beat("send")
    assert check() is None
    with pytest.raises(KeyError, match="unknown liveness mark"):
        live.beat("sned")


def test_link_down_check() -> None:
    clock = FakeClock()
    state: list[str | None] = [LinkState.DOWN]
    check = LinkDownCheck(lambda: state[0], 300.0, clock)
    clock.t += 300.0
    assert check() is None
    clock.t += 1.0
    assert check() == "link DOWN for 301 s (limit 300 s)"
    state[0] = LinkState.DEGRADED  # degraded is alive
    assert check() is None
    clock.t += 1000
    assert check() is None
    state[0] = LinkState.DOWN
    clock.t += 10
    assert check() is None  # counts from when it went down
    never = LinkDownCheck(lambda: "DOWN", None, clock)
    clock.t += 1e6
    assert never() is None


def test_rx_health_combines_progress_and_link() -> None:
    clock = FakeClock()
    live = Liveness({"timers": 5.0}, clock)
    state: list[str | None] = [None]
    check = rx_health(live, lambda: state[0], down_limit=60.0)
    clock.t += 4
    live.beat("timers")
    assert check() is None
    state[0] = LinkState.UP
    clock.t += 4
    live.beat("timers")
    assert check() is None
    clock.t += 6  # the timer task died
    assert check() == "no timers for 6.0 s (limit 5 s)"


def test_simulated_watchdog_expires_when_pets_stop() -> None:
    """Over simulated time: pets every interval while healthy; the watchdog fires
    one timeout after the last pet once health goes bad."""
    clock = FakeClock()
    sim = SimulatedWatchdog(timeout=15.0, clock=clock)
    live = Liveness({"send": 5.0}, clock)
    petter = WatchdogPetter([sim], tx_health(live))
    assert petter.interval == 7.5
    for _ in range(8):  # 60 s of a healthy agent
        live.beat("send")
        petter.tick()
        clock.t += petter.interval
        assert not sim.expired()
    last_pet = sim.pets[-1]
    for _ in range(4):  # then TX stops sending
        petter.tick()
        clock.t += petter.interval
    assert sim.pets[-1] == last_pet
    assert sim.expired()
    assert sim.reports == [sim.reports[0]] and sim.reports[0] is not None
    assert "no send" in sim.reports[0]


# -- /dev/watchdog ---------------------------------------------------------------------------


def test_ioctl_numbers_match_linux_watchdog_h() -> None:
    def ioc(direction: int, nr: int, size: int) -> int:
        return direction << 30 | size << 16 | ord("W") << 8 | nr

    read, readwrite = 2, 3
    assert ioc(read, 0, 40) == watchdog.WDIOC_GETSUPPORT
    assert ioc(read, 5, 4) == watchdog.WDIOC_KEEPALIVE
    assert ioc(readwrite, 6, 4) == watchdog.WDIOC_SETTIMEOUT
    assert ioc(read, 7, 4) == watchdog.WDIOC_GETTIMEOUT


class FakeWatchdogDriver:
    """The ioctls of a watchdog driver, over a plain file standing in for /dev/watchdog."""

    def __init__(self, identity: str = "Broadcom BCM2835 Watchdog timer", rounds_to: int | None = None,
                 refuse: bool = False) -> None:
        self.identity, self.rounds_to, self.refuse = identity, rounds_to, refuse
        self.calls: list[tuple[int, Any]] = []

    def __call__(self, fd: int, request: int, buf: Any, mutate: bool = True) -> int:
        self.calls.append((request, list(buf) if request == watchdog.WDIOC_SETTIMEOUT else None))
        if request == watchdog.WDIOC_GETSUPPORT:
            buf[:] = struct.pack("II32s", 0x8180, 0, self.identity.encode())
        elif request == watchdog.WDIOC_SETTIMEOUT:
            if self.refuse:
                raise OSError(errno.EINVAL, "Invalid argument")
            if self.rounds_to is not None:
                buf[0] = self.rounds_to
        return 0


def sysfs(tmp_path: Path, identity: str | None, max_timeout: int | None) -> Path:
    d = tmp_path / "sys" / "watchdog0"
    d.mkdir(parents=True)
    if identity is not None:
        (d / "identity").write_text(identity + "\n")
    if max_timeout is not None:
        (d / "max_timeout").write_text(f"{max_timeout}\n")
    return d.parent


def test_hardware_watchdog_pets_and_magic_closes(tmp_path: Path) -> None:
    dev = tmp_path / "watchdog"
    dev.touch()
    driver = FakeWatchdogDriver()
    hw = HardwareWatchdog(str(dev), 15, sysfs=sysfs(tmp_path, "Broadcom BCM2835 Watchdog timer", 15),
                          ioctl=driver)
    assert hw.timeout == 15.0 and hw.identity == "Broadcom BCM2835 Watchdog timer"
    assert (watchdog.WDIOC_SETTIMEOUT, [15]) in driver.calls
    petter = WatchdogPetter([hw], lambda: None)
    assert petter.interval == 7.5
    petter.tick()
    petter.tick()
    petter.close()
    assert dev.read_bytes() == b"\0\0V"  # two pets, then the magic close
    with pytest.raises(WatchdogError, match="after close"):
        hw.pet()


def test_hardware_watchdog_close_without_magic_leaves_it_armed(tmp_path: Path) -> None:
    dev = tmp_path / "watchdog"
    dev.touch()
    hw = HardwareWatchdog(str(dev), 10, sysfs=tmp_path / "nosys", ioctl=FakeWatchdogDriver(rounds_to=11))
    assert hw.timeout == 11.0  # as the driver rounded it
    hw.pet()
    hw.close(magic=False)
    assert dev.read_bytes() == b"\0"


def test_bcm2835_refuses_more_than_15_s_before_opening(tmp_path: Path) -> None:
    missing = tmp_path / "watchdog"  # never created: opening it would fail differently
    with pytest.raises(WatchdogError, match=r"BCM2835 watchdog .* at most 15 s; 30 s was asked.*Fix"):
        HardwareWatchdog(str(missing), 30, sysfs=sysfs(tmp_path, "Broadcom BCM2835 Watchdog timer", None),
                         ioctl=FakeWatchdogDriver())
    assert BCM2835_MAX_TIMEOUT == 15


def test_bcm2835_found_only_by_ioctl_is_refused_and_disarmed(tmp_path: Path) -> None:
    """No sysfs identity: the ioctl names the driver after opening; the refusal then disarms it ('V')."""
    dev = tmp_path / "watchdog"
    dev.touch()
    with pytest.raises(WatchdogError, match="at most 15 s"):
        HardwareWatchdog(str(dev), 16, sysfs=tmp_path / "nosys", ioctl=FakeWatchdogDriver())
    assert dev.read_bytes() == b"V"


def test_other_driver_limits_and_refusals(tmp_path: Path) -> None:
    dev = tmp_path / "watchdog"
    dev.touch()
    with pytest.raises(WatchdogError, match="at most 10 s; 12 s"):
        HardwareWatchdog(str(dev), 12, sysfs=sysfs(tmp_path, "iTCO_wdt", 10),
                         ioctl=FakeWatchdogDriver("iTCO_wdt"))
    assert dev.read_bytes() == b""  # refused before opening
    with pytest.raises(WatchdogError, match="refused a 60 s timeout"):
        HardwareWatchdog(str(dev), 60, sysfs=tmp_path / "nosys",
                         ioctl=FakeWatchdogDriver("softdog", refuse=True))
    assert dev.read_bytes() == b"V"
    with pytest.raises(WatchdogError, match="whole number"):
        HardwareWatchdog(str(dev), 7.5, ioctl=FakeWatchdogDriver())


def test_watchdog_held_by_systemd_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def busy(path: str, flags: int) -> int:
        raise OSError(errno.EBUSY, "Device or resource busy")

    monkeypatch.setattr(watchdog.os, "open", busy)
    with pytest.raises(WatchdogError, match="already open, most likely by systemd.*RuntimeWatchdogSec"):
        HardwareWatchdog("/dev/watchdog", 15, sysfs=tmp_path, ioctl=FakeWatchdogDriver())
