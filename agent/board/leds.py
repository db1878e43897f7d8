"""Status LEDs: what each LED shows (sans-IO), the blink timing, and the backends that light them.

```
agent state ──► pattern_for(role, link_state, ...) ──► {Led: Pattern} ──► LedScheduler ──► LedBackend
(link state,     pure: the blink code table below      (sans-IO: what is lit  (on/off)    gpiod (real)
 sources, fault,                                        at `now`, when it      sim (tests)
 sending)                                               next changes)
                       LedDriver.run(): an asyncio timer that applies each change when due
```

Blink codes (the technician's version is board/LEDS.md):

| LED     | TX (OT side)                          | RX (IT side)                                  |
|---------|---------------------------------------|-----------------------------------------------|
| `power` | heartbeat double blink: loop runs     | same                                          |
| `link`  | a short flash per burst of sending;   | on: UP; 2 Hz blink: DEGRADED; off: DOWN       |
|         | off: nothing sent                     |                                               |
| `conn`  | sources (OT brokers): on: all         | sinks (IT brokers): same                      |
|         | connected, 1 Hz: some, off: none      |                                               |
| `fault` | on: fatal (config, refused); 1 Hz:    | same                                          |
|         | recoverable; off: no fault            |                                               |

The power LED is blinked by the driver's own timer in the agent's event
loop, so it freezes (steady on or off) when that loop is stuck, and the
watchdog then restarts the agent.

Like gpiozero's pin factories, the real backend (`GpiodLedBackend`, PyPI
`gpiod` >= 2) is imported only when chosen; `SimulatedLedBackend` records a
timestamped history of every change for tests and laptop demos.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import math
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, NamedTuple

from agent.board.profiles import LED_NAMES, BoardProfile
from agent.errors import BoardError

log = logging.getLogger("diode.leds")

Role = Literal["tx", "rx"]
Clock = Callable[[], float]


class Led(StrEnum):
    """The four status LEDs. Values equal the keys of `BoardProfile.lines`."""

    POWER = "power"
    LINK = "link"
    CONN = "conn"
    FAULT = "fault"


assert tuple(Led) == LED_NAMES, "agent.board.profiles.LED_NAMES and Led must agree"


class Fault(StrEnum):
    """What the fault LED reports. FATAL is a stop the agent cannot heal by itself
    (a config error, a broker refusing the credentials); RECOVERABLE is one it
    is riding out (send errors, dropped messages, records failing authentication)."""

    NONE = "none"
    RECOVERABLE = "recoverable"
    FATAL = "fatal"


class LedError(BoardError):
    """The LEDs cannot be driven as configured; the message names the fix."""


# -- patterns ------------------------------------------------------------------------


@dataclass(frozen=True)
class Pattern:
    """An on/off sequence: `steps` of (lit, seconds), repeated unless `repeat` is False.

    A one-shot pattern (repeat=False) is dark once its steps are done.
    """

    name: str
    steps: tuple[tuple[bool, float], ...]
    repeat: bool = True

    def __post_init__(self) -> None:
        if not self.steps or any(d <= 0 for _, d in self.steps):
            raise ValueError(f"pattern {self.name!r}: steps need positive durations")

    @property
    def period(self) -> float:
        return sum(d for _, d in self.steps)

    def level_at(self, elapsed: float) -> bool:
        """Lit or dark `elapsed` seconds after the pattern started."""
        step = self._locate(elapsed)
        return False if step is None else self.steps[step[0]][0]

    def next_change(self, elapsed: float) -> float | None:
        """Elapsed time of the next step boundary after `elapsed`; None if the level never changes."""
        if len(self.steps) == 1 and self.repeat:
            return None  # steady
        step = self._locate(elapsed)
        if step is None:
            return None  # a finished one-shot
        return step[1]

    def done(self, elapsed: float) -> bool:
        return not self.repeat and elapsed >= self.period

    def _locate(self, elapsed: float) -> tuple[int, float] | None:
        """(index of the step at `elapsed`, elapsed time at which that step ends)."""
        if math.isinf(self.period):
            base = 0.0
        elif self.repeat:
            base = math.floor(max(elapsed, 0.0) / self.period) * self.period
        elif elapsed >= self.period:
            return None
        else:
            base = 0.0
        t = base
        for i, (_, d) in enumerate(self.steps):
            t += d
            if elapsed < t:
                return i, t
        return len(self.steps) - 1, t  # float rounding at the very end of a period


OFF = Pattern("off", ((False, math.inf),))
ON = Pattern("on", ((True, math.inf),))
HEARTBEAT = Pattern("heartbeat", ((True, 0.08), (False, 0.12), (True, 0.08), (False, 0.72)))
BLINK_1HZ = Pattern("blink 1 Hz", ((True, 0.5), (False, 0.5)))
BLINK_2HZ = Pattern("blink 2 Hz", ((True, 0.25), (False, 0.25)))
# On 50 ms then dark at least 50 ms: restarted by each update that says "sending",
# so at a 10 Hz update rate a busy link flickers and an idle one (heartbeats only)
# flashes once a second.
FLASH = Pattern("flash", ((True, 0.05), (False, 0.05)), repeat=False)


def pattern_for(role: Role, link_state: str | None, sources_connected: int, sources_total: int,
                fault: Fault | str, sending: bool) -> dict[Led, Pattern]:
    """The blink code of every LED for an agent's state. Pure.

    `link_state` is "UP", "DEGRADED" or "DOWN" (agent.link.health.LinkState is
    a StrEnum of these) and only matters on RX: TX cannot know whether anything
    arrives, so its link LED shows `sending` (datagrams handed to the
    transport since the last update). `sources_*` count TX's sources or RX's
    sinks.
    """
    if role not in ("tx", "rx"):
        raise ValueError(f"role must be 'tx' or 'rx', not {role!r}")
    fault = Fault(fault)
    if role == "tx":
        link = FLASH if sending else OFF
    elif link_state == "UP":
        link = ON
    elif link_state == "DEGRADED":
        link = BLINK_2HZ
    elif link_state in ("DOWN", None):
        link = OFF
    else:
        raise ValueError(f"link_state must be UP, DEGRADED, DOWN or None, not {link_state!r}")
    if sources_total <= 0 or sources_connected <= 0:
        conn = OFF
    elif sources_connected >= sources_total:
        conn = ON
    else:
        conn = BLINK_1HZ
    fault_led = {Fault.NONE: OFF, Fault.RECOVERABLE: BLINK_1HZ, Fault.FATAL: ON}[fault]
    return {Led.POWER: HEARTBEAT, Led.LINK: link, Led.CONN: conn, Led.FAULT: fault_led}


# -- timing (sans-IO) ----------------------------------------------------------------


# Times come from float arithmetic (t0 + steps): a step edge that lands a
# rounding error after `now` counts as reached, so the driver is never asked to
# wake up at the instant it is already in.
_EPS = 1e-9


class LedScheduler:
    """Which LEDs are lit at `now`, and when that next changes. Pure: time is passed in.

    A pattern keeps its phase while it stays the same, so calling `set` often
    with unchanged state never makes an LED stutter. A one-shot pattern that is
    set again restarts only once its previous run is done.
    """

    def __init__(self, leds: Iterable[Led], now: float, lamp_test: float = 0.0) -> None:
        self.leds = tuple(leds)
        self._active: dict[Led, tuple[Pattern, float]] = {led: (OFF, now) for led in self.leds}
        self._lamp_test_until = now + lamp_test

    def set(self, patterns: Mapping[Led, Pattern], now: float) -> None:
        for led, pattern in patterns.items():
            if led not in self._active:
                continue  # an LED this board does not have
            current, started = self._active[led]
            elapsed = now - started + _EPS
            if pattern == OFF and not current.repeat and not current.done(elapsed):
                continue  # let a flash finish; it ends dark anyway
            if pattern != current or (not pattern.repeat and pattern.done(elapsed)):
                self._active[led] = (pattern, now)

    def pattern(self, led: Led) -> Pattern:
        return self._active[led][0]

    def levels(self, now: float) -> dict[Led, bool]:
        if now < self._lamp_test_until:
            return dict.fromkeys(self.leds, True)
        return {led: p.level_at(now - t0 + _EPS) for led, (p, t0) in self._active.items()}

    def next_deadline(self, now: float) -> float | None:
        if now < self._lamp_test_until:
            return self._lamp_test_until
        deadlines = []
        for pattern, t0 in self._active.values():
            nxt = pattern.next_change(now - t0 + _EPS)
            if nxt is not None:
                deadlines.append(t0 + nxt)
        return min(deadlines, default=None)


# -- backends ------------------------------------------------------------------------


class LedBackend(ABC):
    """Lights LEDs; knows nothing of patterns. `set` is called only on a change."""

    @abstractmethod
    def set(self, led: Led, on: bool) -> None: ...

    @abstractmethod
    def close(self) -> None: ...


class LedChange(NamedTuple):
    time: float
    led: Led
    on: bool


class SimulatedLedBackend(LedBackend):
    """Records every change as (time, led, on) for tests and demos; lights nothing."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or time.monotonic
        self.history: list[LedChange] = []
        self.state: dict[Led, bool] = {}
        self.closed = False

    def set(self, led: Led, on: bool) -> None:
        if self.closed:
            raise LedError("LED backend used after close")
        self.history.append(LedChange(self.clock(), led, on))
        self.state[led] = on

    def close(self) -> None:
        self.closed = True

    def changes(self, led: Led) -> list[tuple[float, bool]]:
        """(time, on) of one LED's changes, in order."""
        return [(c.time, c.on) for c in self.history if c.led == led]


def _chip_sort_key(path: str) -> tuple[int, str]:
    m = re.search(r"(\d+)$", path)
    return (int(m.group(1)) if m else 1 << 30, path)


def resolve_chip(spec: str, *, devices: Iterable[str] | None = None,
                 label_of: Callable[[str], str] | None = None) -> str:
    """The /dev path of a GPIO chip given as a path, a `gpiochipN` name, or a label.

    Labels are how profiles name chips, because the number moves between
    kernels (Pi 5: gpiochip4 -> gpiochip0 in 6.6.45).
    """
    if spec.startswith("/"):
        return spec
    if re.fullmatch(r"gpiochip\d+", spec):
        return f"/dev/{spec}"
    paths = sorted(glob.glob("/dev/gpiochip*") if devices is None else devices, key=_chip_sort_key)
    if label_of is None:
        label_of = _gpiod_label
    seen = []
    for path in paths:
        try:
            label = label_of(path)
        except OSError as exc:
            seen.append(f"{path} (unreadable: {exc.strerror or exc})")
            continue
        if label == spec:
            return path
        seen.append(f"{path} [{label}]")
    raise LedError(f"no GPIO chip labelled {spec!r} (found: {', '.join(seen) or 'no /dev/gpiochip*'}). "
                   "Fix: choose the board profile that matches this board, or set the chip "
                   "explicitly (e.g. gpiochip = \"/dev/gpiochip0\")")


def _import_gpiod() -> Any:
    """The PyPI `gpiod` 2.x module, or a LedError naming the fix.

    Debian bookworm's python3-libgpiod is the libgpiod v1 API (gpiod.Chip(...).get_line),
    which has no `request_lines`; a venv that sees it would fail later and obscurely.
    """
    try:
        import gpiod
    except ImportError:
        raise LedError("LEDs need the gpiod package (libgpiod 2.x bindings). Fix: "
                       "/opt/diode/venv/bin/pip install 'gpiod>=2' (or diode-agents[gpio])") from None
    if not hasattr(gpiod, "request_lines"):
        raise LedError("the gpiod module found is the libgpiod v1 API (Debian's python3-libgpiod). "
                       "Fix: install 'gpiod>=2' from PyPI into the agent's venv, and do not give the "
                       "venv --system-site-packages")
    return gpiod


def _gpiod_label(path: str) -> str:
    gpiod = _import_gpiod()
    with gpiod.Chip(path) as chip:
        return str(chip.get_info().label)


class GpiodLedBackend(LedBackend):
    """LEDs on GPIO lines through the Linux GPIO character device (PyPI gpiod >= 2).

    All lines are requested at once as outputs, initially dark, under the
    consumer name "diode" (visible in `gpioinfo`). The request is held until
    `close`, which releases the lines as they are: LedDriver.close darkens
    them first unless asked to leave the fault LED lit. What a released pin
    does next is up to the kernel's pin controller (it may keep its level or
    fall back to an input), so a lit fault LED after exit is best effort.
    """

    def __init__(self, profile: BoardProfile, *, chip: str | None = None, consumer: str = "diode") -> None:
        gpiod = _import_gpiod()
        from gpiod.line import Direction, Value
        self._active, self._inactive = Value.ACTIVE, Value.INACTIVE
        self.path = resolve_chip(chip or profile.chip)
        self.offsets: dict[Led, int] = {Led(name): off for name, off in profile.lines.items()}
        settings = gpiod.LineSettings(direction=Direction.OUTPUT, active_low=profile.active_low,
                                      output_value=Value.INACTIVE)
        try:
            self._request = gpiod.request_lines(self.path, consumer=consumer,
                                                config={tuple(self.offsets.values()): settings})
        except PermissionError:
            raise LedError(f"{self.path}: permission denied. Fix: run the agent in the 'gpio' group "
                           "(SupplementaryGroups=gpio in the systemd unit)") from None
        except FileNotFoundError:
            raise LedError(f"{self.path}: no such GPIO chip. Fix: check the board profile and "
                           "gpiochip setting (ls /dev/gpiochip*; gpiodetect)") from None
        except OSError as exc:
            lines = ", ".join(f"{led.value}=GPIO{off}" for led, off in self.offsets.items())
            raise LedError(f"{self.path}: cannot claim LED lines {lines}: {exc.strerror or exc}. "
                           "Fix: free them (another program or a device-tree overlay holds a line; "
                           "see gpioinfo) or map the LEDs to other lines") from None

    def set(self, led: Led, on: bool) -> None:
        offset = self.offsets.get(led)
        if offset is not None:
            self._request.set_value(offset, self._active if on else self._inactive)

    def close(self) -> None:
        request, self._request = self._request, None
        if request is not None:
            request.release()


def open_backend(kind: str, profile: BoardProfile, *, chip: str | None = None,
                 clock: Clock | None = None) -> LedBackend:
    """"gpiod" for real LEDs, "sim" for the recording backend."""
    if kind == "gpiod":
        return GpiodLedBackend(profile, chip=chip)
    if kind == "sim":
        return SimulatedLedBackend(clock)
    raise LedError(f"unknown LED backend {kind!r}. Fix: use 'gpiod' or 'sim'")


# -- driver --------------------------------------------------------------------------


class LedDriver:
    """Runs the blink timing on the agent's event loop and writes changes to the backend.

    The agent calls `update(...)` whenever it likes (every 0.1 s on TX, so
    that `sending` makes a flash per burst); `run()` is a task that sleeps
    until the next change. LED trouble never stops the agent: a backend
    error is logged once and the LEDs are left alone from then on.
    """

    def __init__(self, backend: LedBackend, profile: BoardProfile, role: Role, *,
                 lamp_test: float = 1.0, clock: Clock | None = None) -> None:
        if role not in ("tx", "rx"):
            raise ValueError(f"role must be 'tx' or 'rx', not {role!r}")
        self.backend, self.profile, self.role = backend, profile, role
        self.clock: Clock = clock or time.monotonic
        self.leds = tuple(Led(name) for name in profile.lines)
        # Lamp test: every LED lit for a moment at start, so a dead LED is noticed.
        self.scheduler = LedScheduler(self.leds, self.clock(), lamp_test)
        self._written: dict[Led, bool] = {}
        self._wake = asyncio.Event()
        self.failed: str | None = None

    def update(self, link_state: str | None = None, sources_connected: int = 0,
               sources_total: int = 0, fault: Fault | str = Fault.NONE, sending: bool = False) -> None:
        """Set the agent state the LEDs show; cheap, call as often as you like."""
        self.set_patterns(pattern_for(self.role, link_state, sources_connected, sources_total,
                                      fault, sending))

    def set_patterns(self, patterns: Mapping[Led, Pattern]) -> None:
        self.scheduler.set(patterns, self.clock())
        self._wake.set()

    def describe(self) -> dict[str, str]:
        """LED -> pattern name, e.g. {"link": "blink 2 Hz"}, for the status file."""
        if self.failed is not None:
            return {"error": self.failed}
        return {led.value: self.scheduler.pattern(led).name for led in self.leds}

    def step(self, now: float | None = None) -> float | None:
        """Write the levels due at `now`; return when the next change is due. Sans-sleep."""
        now = self.clock() if now is None else now
        for led, on in self.scheduler.levels(now).items():
            if self._written.get(led) != on:
                self._write(led, on)
        return self.scheduler.next_deadline(now)

    async def run(self) -> None:
        """Apply changes as they fall due, until cancelled."""
        while True:
            self._wake.clear()
            deadline = self.step()
            timeout = None if deadline is None else max(0.0, deadline - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def close(self, *, keep_fault: bool = False) -> None:
        """Darken every LED (the fault LED stays as it is with `keep_fault`) and release the backend."""
        for led in self.leds:
            if not (keep_fault and led == Led.FAULT) and self._written.get(led, False):
                self._write(led, False)
        try:
            self.backend.close()
        except OSError as exc:
            log.warning("LEDs: closing the backend failed: %s", exc)

    def _write(self, led: Led, on: bool) -> None:
        if self.failed is not None:
            return
        try:
            self.backend.set(led, on)
        except (OSError, LedError) as exc:
            self.failed = str(exc)
            log.error("LEDs: cannot set the %s LED (%s); LEDs are left alone from now on", led.value, exc)
            return
        self._written[led] = on


# -- helpers for the agents -----------------------------------------------------------


class RecentIncrease:
    """Whether a monotonic counter grew within the last `hold` seconds.

    Turns counters (send errors, auth failures, dropped messages) into a
    recoverable fault that blinks while the trouble lasts and stops by itself.
    """

    def __init__(self, hold: float = 10.0) -> None:
        self.hold = hold
        self._value: int | None = None
        self._grew_at: float | None = None

    def __call__(self, value: int, now: float) -> bool:
        if self._value is not None and value > self._value:
            self._grew_at = now
        self._value = value
        return self._grew_at is not None and now - self._grew_at < self.hold


def show_fatal(role: Role, seconds: float, *, backend: LedBackend | None = None,
               profile: BoardProfile | None = None, chip: str | None = None) -> bool:
    """Light the fault LED for `seconds` (power keeps its heartbeat), then release, fault left lit.

    For fatal errors found before the agent's LEDs exist, e.g. a config file
    that does not parse: the board is found by its device-tree model. Runs
    its own short event loop, so call it outside one (in `cli`, before
    exiting). Returns False, having done nothing, off a Pi or without gpiod.
    """
    if backend is None:
        from agent.board.profiles import detect_profile
        profile = profile or detect_profile()
        if profile is None:
            return False
        try:
            backend = GpiodLedBackend(profile, chip=chip)
        except LedError as exc:
            log.debug("no LEDs for the fatal error: %s", exc)
            return False
    if profile is None:
        from agent.board.profiles import PROFILES
        profile = PROFILES["pi4"]
    driver = LedDriver(backend, profile, role, lamp_test=0.0)
    driver.update(None, 0, 0, Fault.FATAL)

    async def hold() -> None:
        task = asyncio.create_task(driver.run())
        await asyncio.sleep(seconds)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(hold())
    driver.close(keep_fault=True)
    return True
