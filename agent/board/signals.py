"""LEDs and watchdogs for an agent, through board/'s small interfaces.

```
agent state (link state, connections, faults, sends) ─► BoardSignals ─► LedDriver ─► gpiod | simulated
main-loop progress marks (beat) ────────────────────┘               └─► WatchdogPetter ─► systemd WATCHDOG=1
                                                                                         └► /dev/watchdog
```

LED or watchdog trouble never stops the data: it is logged and the agent
carries on. The systemd watchdog is petted only while the agent's own health
check passes (TX: a datagram went out recently; RX: the timer loop runs and
the link has not been DOWN for longer than `watchdog_down_limit`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from agent.board.leds import Fault, LedDriver, LedError, RecentIncrease, open_backend
from agent.board.profiles import get_profile
from agent.board.watchdog import (
    HardwareWatchdog,
    Liveness,
    SystemdNotifier,
    SystemdWatchdog,
    WatchdogError,
    WatchdogPetter,
    WatchdogTarget,
    rx_health,
    tx_health,
)
from agent.config import BoardConfig

log = logging.getLogger("diode.board")


class BoardSignals:
    def __init__(self, role: str, cfg: BoardConfig, liveness: dict[str, float]) -> None:
        self.role, self.cfg = role, cfg
        self.notifier = SystemdNotifier.from_env()
        self.liveness = Liveness(liveness)
        self.leds: LedDriver | None = None
        self.petter: WatchdogPetter | None = None
        self._faults: dict[str, RecentIncrease] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, link_state: Callable[[], str | None] | None = None) -> None:
        cfg = self.cfg
        if cfg.leds != "none":
            try:
                name = "pi4" if cfg.leds == "sim" and cfg.profile == "auto" else cfg.profile
                profile = get_profile(name, chip=cfg.gpiochip, active_low=cfg.active_low)
                self.leds = LedDriver(open_backend(cfg.leds, profile, chip=cfg.gpiochip),
                                      profile, self.role)  # type: ignore[arg-type]
                self._tasks.append(asyncio.create_task(self.leds.run()))
            except (LedError, ValueError, OSError) as exc:
                log.error("status LEDs unavailable, running without them: %s", exc)
        targets: list[WatchdogTarget] = []
        systemd = SystemdWatchdog.from_env(self.notifier)
        if systemd is not None:
            targets.append(systemd)
        if cfg.hardware_watchdog:
            try:
                targets.append(HardwareWatchdog(cfg.hardware_watchdog,
                                                cfg.hardware_watchdog_timeout))
            except (WatchdogError, OSError) as exc:
                log.error("hardware watchdog unavailable: %s", exc)
        if targets:
            check = (tx_health(self.liveness) if self.role == "tx" else
                     rx_health(self.liveness, link_state or (lambda: None),
                               cfg.watchdog_down_limit))
            self.petter = WatchdogPetter(targets, check)
            self._tasks.append(asyncio.create_task(self.petter.run()))

    def beat(self, mark: str) -> None:
        self.liveness.beat(mark)

    def ready(self, status: str) -> None:
        self.notifier.ready(status)

    def fault(self, counters: dict[str, int], now: float, fatal: bool = False,
              active: bool = False) -> Fault:
        """FATAL, or RECOVERABLE while any of these counters grew in the last 10 s or a
        condition is `active` (e.g. a spool on a full disk)."""
        if fatal:
            return Fault.FATAL
        grew = active
        for name, value in counters.items():
            grew |= self._faults.setdefault(name, RecentIncrease())(value, now)
        return Fault.RECOVERABLE if grew else Fault.NONE

    def show(self, link_state: str | None, connected: int, total: int, fault: Fault,
             sending: bool = False) -> None:
        if self.leds is not None:
            self.leds.update(link_state, connected, total, fault, sending)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.leds is not None:
            out["leds"] = self.leds.describe()
        if self.petter is not None:
            out["watchdog"] = "petting" if self.petter.problem is None else self.petter.problem
        return out

    async def close(self, fatal: bool) -> None:
        self.notifier.stopping("stopping")
        if fatal and self.leds is not None:
            self.leds.update(None, 0, 0, Fault.FATAL)
            self.leds.step()  # written now: the fault LED stays lit after exit
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.leds is not None:
            self.leds.close(keep_fault=fatal)
        if self.petter is not None:
            self.petter.close()
