"""Watchdogs: systemd notify (READY, STATUS, WATCHDOG), /dev/watchdog, and the health gate for both.

```
agent tasks ──► Liveness.beat("send") ─┐
RX link state ──► LinkDownCheck ───────┴► check() -> None | "why not" ──► WatchdogPetter.tick()
                                                                          every min(timeout) / 2
                                                                          pets only when healthy
                                            ┌──────────────────────────────┼────────────────────┐
                                    SystemdWatchdog              HardwareWatchdog         SimulatedWatchdog
                                    WATCHDOG=1 to $NOTIFY_SOCKET  write to /dev/watchdog  records pets (tests)
```

Why a gate and not a timer: a pet proves only that the code doing it runs.
The petter runs on the agent's event loop, so a blocked loop stops the pets
by itself; the health check adds what a running loop does not prove:

- TX: healthy while a datagram was handed to the transport within the
  last `max(5 s, 3 x heartbeat_interval)`. TX sends a heartbeat every
  interval whatever the plant does, so silence means the pump task died or
  every send fails; a restart is the cure for both.
- RX: healthy while the receive/timer task made progress within 5 s, and
  the link has not been DOWN for longer than `down_limit` (300 s by
  default). A long DOWN is usually TX's side (powered off, cable out) and a
  restart then changes nothing but costs little (the agent comes back DOWN,
  the status topic says so throughout); it is the only cure when it is RX's
  side: a socket bound to an interface that was re-created, a wedged serial
  port. Pass `down_limit=None` for no restarts on a DOWN link.

systemd then restarts the service when WatchdogSec passes without a pet
(the unit sends SIGABRT first; with PYTHONFAULTHANDLER=1 the journal gets
every thread's Python stack). On a Pi the board's own hardware watchdog
is best left to systemd (RuntimeWatchdogSec=15s in system.conf): it then
reboots the board if systemd itself hangs. `HardwareWatchdog` is for
images without that, and refuses to open a device systemd already holds.
"""

from __future__ import annotations

import array
import asyncio
import errno
import fcntl
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from agent.errors import BoardError

log = logging.getLogger("diode.watchdog")

Clock = Callable[[], float]
HealthCheck = Callable[[], str | None]
"""Returns None while healthy, else a short reason (logged and shown in `systemctl status`)."""

BCM2835_MAX_TIMEOUT = 15
"""The BCM2835/2711/2712 PM watchdog counts 20 bits of 1/65536 s ticks: at most 15 s."""

# <linux/watchdog.h>: _IOR('W', 0, struct watchdog_info), _IOR('W', 5, int),
# _IOWR('W', 6, int), _IOR('W', 7, int). struct watchdog_info is u32, u32, u8[32].
WDIOC_GETSUPPORT = 0x80285700
WDIOC_KEEPALIVE = 0x80045705
WDIOC_SETTIMEOUT = 0xC0045706
WDIOC_GETTIMEOUT = 0x80045707
_WATCHDOG_INFO = struct.Struct("II32s")


class WatchdogError(BoardError):
    """A watchdog cannot be used as configured; the message names the fix."""


# -- systemd notify ------------------------------------------------------------------


def notify_address(value: str) -> str:
    """The socket address in $NOTIFY_SOCKET: a path, or '@name' for the abstract namespace.

    Python's AF_UNIX addresses take a leading NUL for the abstract namespace,
    which is what systemd's '@' stands for.
    """
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    raise WatchdogError(f"NOTIFY_SOCKET={value!r}: only a path or an @abstract socket is supported")


class SystemdNotifier:
    """sd_notify(3) without libsystemd: newline-separated assignments in one datagram.

    Disabled (every call returns False) when the agent was not started by
    systemd with Type=notify, so the same code runs in a terminal and in tests.
    The socket is non-blocking: a stuck systemd must never stall the agent's loop.
    """

    def __init__(self, address: str | None) -> None:
        self.address = None if not address else notify_address(address)
        self._sock: socket.socket | None = None
        self.errors = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SystemdNotifier:
        return cls((os.environ if env is None else env).get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send e.g. notify("READY=1", "STATUS=up"); True if systemd got it."""
        if self.address is None:
            return False
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        data = "\n".join(assignments).encode()
        try:
            self._sock.sendto(data, self.address)
        except OSError as exc:
            self.errors += 1
            if self.errors in (1, 10, 100) or self.errors % 10000 == 0:
                log.warning("systemd notify to %s failed (%d so far): %s",
                            self.address.replace("\0", "@"), self.errors, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete: systemd starts the watchdog clock and dependents now."""
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        """One line shown by `systemctl status`."""
        return self.notify(f"STATUS={text.replace(chr(10), ' ')}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def systemd_watchdog_timeout(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """WATCHDOG_USEC in seconds when systemd expects pets from this process, else None.

    Like sd_watchdog_enabled(3): WATCHDOG_PID, when set, must be our pid, so
    a child process that inherited the environment does not pet for us.
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    wpid = env.get("WATCHDOG_PID")
    if wpid and int(wpid) != (os.getpid() if pid is None else pid):
        return None
    value = int(usec)
    if value <= 0:
        raise WatchdogError(f"WATCHDOG_USEC={usec!r} is not a positive number of microseconds")
    return value / 1e6


# -- watchdog targets ----------------------------------------------------------------


class WatchdogTarget(Protocol):
    """Something to pet at least once per `timeout` seconds."""

    name: str
    timeout: float

    def pet(self) -> None: ...
    def report(self, problem: str | None) -> None: ...
    def close(self) -> None: ...


class SystemdWatchdog:
    """Pets systemd's per-service watchdog (WatchdogSec=) with WATCHDOG=1."""

    name = "systemd"

    def __init__(self, notifier: SystemdNotifier, timeout: float) -> None:
        self.notifier, self.timeout = notifier, timeout

    @classmethod
    def from_env(cls, notifier: SystemdNotifier | None = None,
                 env: Mapping[str, str] | None = None) -> SystemdWatchdog | None:
        """The systemd watchdog if the unit has WatchdogSec= and this is its main process."""
        notifier = notifier or SystemdNotifier.from_env(env)
        timeout = systemd_watchdog_timeout(env)
        if timeout is None or not notifier.enabled:
            return None
        return cls(notifier, timeout)

    def pet(self) -> None:
        self.notifier.watchdog()

    def report(self, problem: str | None) -> None:
        self.notifier.status("running" if problem is None
                             else f"unhealthy, not petting the watchdog: {problem}")

    def close(self) -> None:
        """Nothing to do: STOPPING=1 is the agent's to send."""


class SimulatedWatchdog:
    """Records pets and reports; `expired(now)` says whether a real one would have fired."""

    def __init__(self, timeout: float, clock: Clock | None = None, name: str = "simulated") -> None:
        self.name, self.timeout = name, timeout
        self.clock: Clock = clock or time.monotonic
        self.started = self.clock()
        self.pets: list[float] = []
        self.reports: list[str | None] = []
        self.closed = False
        self.magic_closed = False

    def pet(self) -> None:
        self.pets.append(self.clock())

    def report(self, problem: str | None) -> None:
        self.reports.append(problem)

    def expired(self, now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        last = self.pets[-1] if self.pets else self.started
        return now - last > self.timeout

    def close(self) -> None:
        self.closed = self.magic_closed = True


def _sysfs_dir(device: str, sysfs: Path) -> Path:
    """/dev/watchdog is the legacy alias of watchdog0; /dev/watchdogN is itself."""
    name = Path(device).name
    return sysfs / ("watchdog0" if name == "watchdog" else name)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _is_bcm2835(identity: str | None) -> bool:
    return identity is not None and "bcm2835" in identity.lower()


class HardwareWatchdog:
    """/dev/watchdog: open (the timer starts), write to pet, 'V' then close to stop it.

    The timeout is checked against the driver's limit *before* opening,
    because opening arms the timer: a refusal after that would have to
    disarm it first (and does). The BCM2835 family (Pi 1-5) allows at most
    15 s; a larger value is refused with the fix rather than silently cut.
    """

    name = "hardware"

    def __init__(self, device: str = "/dev/watchdog", timeout: float = BCM2835_MAX_TIMEOUT, *,
                 sysfs: Path = Path("/sys/class/watchdog"),
                 ioctl: Callable[..., object] = fcntl.ioctl) -> None:
        self.device = device
        self._ioctl = ioctl
        self._fd: int | None = None
        wanted = int(timeout)
        if wanted != timeout or wanted < 1:
            raise WatchdogError(f"{device}: timeout {timeout!r} must be a whole number of seconds >= 1")
        info = _sysfs_dir(device, sysfs)
        self.identity = _read(info / "identity")
        max_text = _read(info / "max_timeout")
        self._check_limit(wanted, self.identity, int(max_text) if max_text and max_text.isdigit() else None)
        try:
            self._fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise self._open_error(exc) from None
        try:
            self._configure(wanted)
        except BaseException:
            self.close(magic=True)
            raise

    def _check_limit(self, wanted: int, identity: str | None, max_timeout: int | None) -> None:
        if _is_bcm2835(identity) and wanted > BCM2835_MAX_TIMEOUT:
            raise WatchdogError(f"{self.device} is the BCM2835 watchdog ({identity}), which allows at most "
                                f"{BCM2835_MAX_TIMEOUT} s; {wanted} s was asked. Fix: set the hardware "
                                f"watchdog timeout to {BCM2835_MAX_TIMEOUT} s or less")
        if max_timeout is not None and wanted > max_timeout:
            raise WatchdogError(f"{self.device} ({identity or 'unknown driver'}) allows at most "
                                f"{max_timeout} s; {wanted} s was asked. Fix: lower the hardware "
                                "watchdog timeout")

    def _open_error(self, exc: OSError) -> WatchdogError:
        if exc.errno == errno.EBUSY:
            return WatchdogError(f"{self.device} is already open, most likely by systemd "
                                 "(RuntimeWatchdogSec= in /etc/systemd/system.conf). Fix: leave the hardware "
                                 "watchdog to systemd and use WatchdogSec= in the unit, or set "
                                 "RuntimeWatchdogSec=off")
        if exc.errno in (errno.EACCES, errno.EPERM):
            return WatchdogError(f"{self.device}: permission denied. Fix: allow the device to the service "
                                 "(DeviceAllow=char-misc rw and char-watchdog rw, and its group)")
        if exc.errno == errno.ENOENT:
            return WatchdogError(f"{self.device}: no such device. Fix: enable the watchdog driver "
                                 "(dtparam=watchdog=on on a Pi) or turn the hardware watchdog off")
        return WatchdogError(f"{self.device}: cannot open: {exc.strerror or exc}")

    def _configure(self, wanted: int) -> None:
        assert self._fd is not None
        buf = bytearray(_WATCHDOG_INFO.size)
        try:
            self._ioctl(self._fd, WDIOC_GETSUPPORT, buf, True)
            identity = _WATCHDOG_INFO.unpack(bytes(buf))[2].split(b"\0", 1)[0].decode("ascii", "replace")
            self.identity = identity or self.identity
        except OSError:
            pass  # identity stays what sysfs said
        self._check_limit(wanted, self.identity, None)
        arg = array.array("i", [wanted])
        try:
            self._ioctl(self._fd, WDIOC_SETTIMEOUT, arg, True)
        except OSError as exc:
            raise WatchdogError(f"{self.device} ({self.identity or 'unknown driver'}) refused a {wanted} s "
                                f"timeout: {exc.strerror or exc}. Fix: choose a timeout the driver supports "
                                f"(cat /sys/class/watchdog/watchdog0/max_timeout)") from None
        self.timeout = float(arg[0] or wanted)  # the driver may round

    def pet(self) -> None:
        """Any byte but 'V' pets (a 'V' would arm the magic close)."""
        if self._fd is None:
            raise WatchdogError(f"{self.device}: pet after close")
        os.write(self._fd, b"\0")

    def report(self, problem: str | None) -> None:
        """Nothing to show on the hardware."""

    def close(self, magic: bool = True) -> None:
        """Close; with `magic` (the default, for a clean stop) write 'V' first so the
        timer stops and a deliberate `systemctl stop` does not reboot the board.
        Drivers built with nowayout keep running regardless."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if magic:
                os.write(fd, b"V")
        finally:
            os.close(fd)


# -- health gate ---------------------------------------------------------------------


class Liveness:
    """Named progress marks with limits: healthy while every mark is younger than its limit.

    A mark never beaten counts from creation, which is the start-up grace.
    """

    def __init__(self, limits: Mapping[str, float], clock: Clock | None = None) -> None:
        self.limits = dict(limits)
        self.clock: Clock = clock or time.monotonic
        created = self.clock()
        self.last: dict[str, float] = dict.fromkeys(self.limits, created)

    def beat(self, name: str) -> None:
        if name not in self.limits:
            raise KeyError(f"unknown liveness mark {name!r}; known: {', '.join(self.limits)}")
        self.last[name] = self.clock()

    def __call__(self) -> str | None:
        now = self.clock()
        for name, limit in self.limits.items():
            age = now - self.last[name]
            if age > limit:
                return f"no {name} for {age:.1f} s (limit {limit:g} s)"
        return None


class LinkDownCheck:
    """Unhealthy once the link state has been DOWN for longer than `limit` seconds."""

    def __init__(self, link_state: Callable[[], str | None], limit: float | None,
                 clock: Clock | None = None) -> None:
        self.link_state, self.limit = link_state, limit
        self.clock: Clock = clock or time.monotonic
        self.down_since: float | None = self.clock()  # RX starts DOWN

    def __call__(self) -> str | None:
        now = self.clock()
        if self.link_state() not in ("DOWN", None):
            self.down_since = None
            return None
        if self.down_since is None:
            self.down_since = now
        if self.limit is not None and now - self.down_since > self.limit:
            return f"link DOWN for {now - self.down_since:.0f} s (limit {self.limit:g} s)"
        return None


def all_of(*checks: HealthCheck) -> HealthCheck:
    """Healthy when every check is; the first problem found is the reason.

    Every check runs each time, so stateful checks (LinkDownCheck) keep their state current.
    """
    def check() -> str | None:
        problems = [p for p in (c() for c in checks) if p is not None]
        return problems[0] if problems else None
    return check


def tx_health(liveness: Liveness) -> HealthCheck:
    """TX: the 'send' mark (beaten after each datagram the transport accepted) is fresh."""
    return liveness


def rx_health(liveness: Liveness, link_state: Callable[[], str | None], down_limit: float | None = 300.0,
              clock: Clock | None = None) -> HealthCheck:
    """RX: the 'timers' mark is fresh and the link has not been DOWN longer than `down_limit`."""
    return all_of(liveness, LinkDownCheck(link_state, down_limit, clock or liveness.clock))


class WatchdogPetter:
    """Pets every target at half the smallest timeout, but only while `check()` says healthy.

    Transitions are logged once each way and reported to the targets (systemd
    shows the reason in `systemctl status`); `problem` holds the latest reason.
    """

    def __init__(self, targets: list[WatchdogTarget], check: HealthCheck, *,
                 interval: float | None = None) -> None:
        if not targets:
            raise ValueError("WatchdogPetter needs at least one target")
        self.targets = targets
        self.check = check
        self.interval = interval if interval is not None else min(t.timeout for t in targets) / 2
        self.pets = 0
        self.skipped = 0
        self.problem: str | None = None

    def tick(self) -> bool:
        """Check health; pet every target if healthy. True if it petted."""
        try:
            problem = self.check()
        except Exception as exc:  # a broken check must read as unhealthy, not kill the petter
            problem = f"health check raised {type(exc).__name__}: {exc}"
        if (problem is None) != (self.problem is None):  # a transition, not a new age in the reason
            if problem is None:
                log.info("healthy again; petting the watchdog")
            else:
                log.warning("not petting the watchdog: %s; the service is restarted if this lasts", problem)
            for target in self.targets:
                target.report(problem)
        self.problem = problem
        if problem is not None:
            self.skipped += 1
            return False
        for target in self.targets:
            try:
                target.pet()
            except OSError as exc:
                log.error("%s watchdog: pet failed: %s", target.name, exc)
        self.pets += 1
        return True

    async def run(self) -> None:
        """Tick every `interval` until cancelled."""
        while True:
            self.tick()
            await asyncio.sleep(self.interval)

    def close(self) -> None:
        for target in self.targets:
            target.close()
