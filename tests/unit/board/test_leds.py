"""Status LEDs: the blink-code table, its timing, the driver over a recording backend, the gpiod backend.

Most timing runs on a fake clock through `LedDriver.step`, so histories are
exact; one test runs the real asyncio driver for a fraction of a second.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.board import leds
from agent.board.leds import (
    BLINK_1HZ,
    BLINK_2HZ,
    FLASH,
    HEARTBEAT,
    OFF,
    ON,
    Fault,
    GpiodLedBackend,
    Led,
    LedDriver,
    LedError,
    LedScheduler,
    Pattern,
    RecentIncrease,
    SimulatedLedBackend,
    pattern_for,
    resolve_chip,
    show_fatal,
)
from agent.board.profiles import (
    HEADER_PIN,
    PROFILES,
    BoardProfile,
    detect_profile,
    get_profile,
    profile_for_model,
)
from agent.link.health import LinkState

REPO = Path(__file__).resolve().parents[3]


class FakeClock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(role: str = "rx", lamp_test: float = 0.0,
         profile: BoardProfile | None = None) -> tuple[LedDriver, SimulatedLedBackend, FakeClock]:
    clock = FakeClock()
    backend = SimulatedLedBackend(clock)
    driver = LedDriver(backend, profile or PROFILES["pi4"], role, lamp_test=lamp_test,  # type: ignore[arg-type]
                       clock=clock)
    return driver, backend, clock


def advance(driver: LedDriver, clock: FakeClock, until: float) -> None:
    """Apply what is due now and every change due before `until`; leave the clock at `until`.

    The changes due at `until` itself are applied by the next call (after the
    test's `update`), as the real loop would when an update and a change coincide.
    """
    deadline = driver.step()
    for _ in range(100_000):
        if deadline is None or deadline >= until:
            break
        assert deadline > clock.t, "the driver must never ask to be woken in the past"
        clock.t = deadline
        deadline = driver.step()
    else:
        raise AssertionError("the driver never settles")
    clock.t = until


def level(backend: SimulatedLedBackend, led: Led, t: float) -> bool:
    """The LED's level at time t, from the recorded history."""
    on = False
    for when, value in backend.changes(led):
        if when <= t:
            on = value
    return on


# -- the table ---------------------------------------------------------------------


@pytest.mark.parametrize(("state", "expected"), [
    (LinkState.UP, ON), (LinkState.DEGRADED, BLINK_2HZ), (LinkState.DOWN, OFF), (None, OFF),
    ("UP", ON), ("DEGRADED", BLINK_2HZ), ("DOWN", OFF),
])
def test_rx_link_led_follows_link_state(state: str | None, expected: Pattern) -> None:
    assert pattern_for("rx", state, 1, 1, Fault.NONE, sending=False)[Led.LINK] == expected
    # RX's link LED does not care whether anything is sent.
    assert pattern_for("rx", state, 1, 1, Fault.NONE, sending=True)[Led.LINK] == expected


@pytest.mark.parametrize("state", [LinkState.UP, LinkState.DEGRADED, LinkState.DOWN, None])
def test_tx_link_led_shows_sending_whatever_the_link_state(state: str | None) -> None:
    assert pattern_for("tx", state, 1, 1, Fault.NONE, sending=True)[Led.LINK] == FLASH
    assert pattern_for("tx", state, 1, 1, Fault.NONE, sending=False)[Led.LINK] == OFF


@pytest.mark.parametrize("role", ["tx", "rx"])
@pytest.mark.parametrize(("connected", "total", "expected"), [
    (3, 3, ON), (1, 3, BLINK_1HZ), (2, 3, BLINK_1HZ), (0, 3, OFF), (0, 0, OFF), (1, 1, ON),
])
def test_conn_led(role: str, connected: int, total: int, expected: Pattern) -> None:
    assert pattern_for(role, "UP", connected, total, Fault.NONE, False)[Led.CONN] == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("role", ["tx", "rx"])
@pytest.mark.parametrize(("fault", "expected"), [
    (Fault.NONE, OFF), (Fault.RECOVERABLE, BLINK_1HZ), (Fault.FATAL, ON), ("fatal", ON),
])
def test_fault_led(role: str, fault: Fault | str, expected: Pattern) -> None:
    patterns = pattern_for(role, "DOWN", 0, 1, fault, False)  # type: ignore[arg-type]
    assert patterns[Led.FAULT] == expected
    assert patterns[Led.POWER] == HEARTBEAT  # always: it proves the loop runs


def test_pattern_for_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="role"):
        pattern_for("xx", "UP", 1, 1, Fault.NONE, False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="link_state"):
        pattern_for("rx", "SIDEWAYS", 1, 1, Fault.NONE, False)
    with pytest.raises(ValueError):
        pattern_for("rx", "UP", 1, 1, "bogus", False)


# -- patterns and the scheduler -----------------------------------------------------


def test_pattern_levels_and_changes() -> None:
    assert [BLINK_2HZ.level_at(t) for t in (0.0, 0.1, 0.25, 0.4, 0.5, 0.74, 0.75)] == \
        [True, True, False, False, True, True, False]
    assert BLINK_2HZ.next_change(0.0) == 0.25
    assert BLINK_2HZ.next_change(0.3) == 0.5
    assert BLINK_2HZ.next_change(1.1) == 1.25
    assert ON.next_change(5.0) is None and ON.level_at(1e9)
    assert OFF.next_change(5.0) is None and not OFF.level_at(0.0)
    assert FLASH.level_at(0.0) and not FLASH.level_at(0.06)
    assert FLASH.next_change(0.0) == 0.05 and FLASH.next_change(0.2) is None
    assert FLASH.done(0.1) and not FLASH.done(0.09)
    with pytest.raises(ValueError):
        Pattern("bad", ((True, 0.0),))


def test_scheduler_keeps_phase_while_the_pattern_is_unchanged() -> None:
    s = LedScheduler([Led.LINK], now=0.0)
    s.set({Led.LINK: BLINK_2HZ}, 0.0)
    s.set({Led.LINK: BLINK_2HZ}, 0.2)  # same state again: no restart
    assert s.levels(0.3) == {Led.LINK: False}
    assert s.next_deadline(0.3) == 0.5


def test_scheduler_flash_restarts_only_when_done_and_is_not_cut_short() -> None:
    s = LedScheduler([Led.LINK], now=0.0)
    s.set({Led.LINK: FLASH}, 0.0)
    s.set({Led.LINK: FLASH}, 0.03)  # still flashing: no restart
    s.set({Led.LINK: OFF}, 0.04)    # and not cut short by "not sending"
    assert s.levels(0.045) == {Led.LINK: True}
    assert s.levels(0.06) == {Led.LINK: False}
    s.set({Led.LINK: FLASH}, 0.2)   # done: a new flash
    assert s.levels(0.21) == {Led.LINK: True}


def test_scheduler_ignores_leds_the_board_lacks() -> None:
    s = LedScheduler([Led.POWER], now=0.0)
    s.set({Led.POWER: ON, Led.FAULT: ON}, 0.0)
    assert s.levels(0.0) == {Led.POWER: True}


# -- the driver on a fake clock -------------------------------------------------------


STATES = [LinkState.UP, LinkState.DEGRADED, LinkState.DOWN]


@pytest.mark.parametrize(("before", "after"), list(itertools.permutations(STATES, 2)))
def test_rx_every_link_transition_shows_the_documented_pattern(before: LinkState, after: LinkState) -> None:
    driver, backend, clock = make("rx")
    driver.update(before, 2, 2, Fault.NONE)
    advance(driver, clock, 10.0)
    driver.update(after, 2, 2, Fault.NONE)
    advance(driver, clock, 11.0)
    expected = {LinkState.UP: ON, LinkState.DEGRADED: BLINK_2HZ, LinkState.DOWN: OFF}[after]
    assert driver.scheduler.pattern(Led.LINK) == expected
    for k in range(20):  # sample mid-step, away from the edges
        t = 10.0 + k * 0.05 + 0.01
        assert level(backend, Led.LINK, t) == expected.level_at(t - 10.0), (after, t)
    # and before the change, the old pattern
    old = {LinkState.UP: ON, LinkState.DEGRADED: BLINK_2HZ, LinkState.DOWN: OFF}[before]
    assert level(backend, Led.LINK, 9.9) == old.level_at(9.9)


@pytest.mark.parametrize(("before", "after"), list(itertools.permutations(STATES, 2)))
def test_tx_link_transitions_leave_the_send_led_alone(before: LinkState, after: LinkState) -> None:
    driver, backend, clock = make("tx")
    driver.update(before, 1, 1, Fault.NONE, sending=False)
    advance(driver, clock, 1.0)
    driver.update(after, 1, 1, Fault.NONE, sending=False)
    advance(driver, clock, 2.0)
    assert backend.changes(Led.LINK) == [(0.0, False)]


def test_rx_history_is_exact() -> None:
    driver, backend, clock = make("rx")
    driver.update("UP", 2, 2, Fault.NONE)
    advance(driver, clock, 1.0)
    driver.update("DEGRADED", 2, 2, Fault.NONE)
    advance(driver, clock, 2.0)
    driver.update("DOWN", 1, 2, Fault.NONE)
    advance(driver, clock, 3.0)
    driver.update("UP", 0, 2, Fault.RECOVERABLE)
    advance(driver, clock, 4.0)
    assert backend.changes(Led.LINK) == [(0.0, True), (1.25, False), (1.5, True), (1.75, False),
                                         (3.0, True)]
    # all connected until 2.0, then some (1 Hz: on 0.5, off 0.5), then none from 3.0
    assert backend.changes(Led.CONN) == [(0.0, True), (2.5, False)]
    assert backend.changes(Led.FAULT) == [(0.0, False), (3.0, True), (3.5, False)]
    # the power LED double-blinks every second from the first update on
    power = backend.changes(Led.POWER)
    assert [on for _, on in power[:5]] == [True, False, True, False, True]
    assert [round(t, 3) for t, _ in power[:5]] == [0.0, 0.08, 0.2, 0.28, 1.0]


def test_describe_for_the_status_file() -> None:
    driver, backend, clock = make("rx")
    driver.update("DEGRADED", 1, 2, Fault.NONE)
    assert driver.describe() == {"power": "heartbeat", "link": "blink 2 Hz", "conn": "blink 1 Hz",
                                 "fault": "off"}


def test_tx_sending_flashes_once_per_update_that_saw_sending() -> None:
    driver, backend, clock = make("tx")
    # busy: every 0.1 s update says "sent something"
    for k in range(10):
        clock.t = k * 0.1
        driver.update(None, 1, 1, Fault.NONE, sending=True)
        advance(driver, clock, k * 0.1 + 0.1 - 1e-9)
    busy = [(round(t, 3), on) for t, on in backend.changes(Led.LINK)]
    assert busy == [x for k in range(10)
                    for x in ((round(k * 0.1, 3), True), (round(k * 0.1 + 0.05, 3), False))]
    # idle: a heartbeat once a second, so "sending" in one update in ten
    backend.history.clear()
    for k in range(10, 40):
        clock.t = k * 0.1
        driver.update(None, 1, 1, Fault.NONE, sending=k % 10 == 0)
        advance(driver, clock, k * 0.1 + 0.1 - 1e-9)
    assert [on for _, on in backend.changes(Led.LINK)] == [True, False] * 3
    # nothing sent: dark
    backend.history.clear()
    driver.update(None, 1, 1, Fault.NONE, sending=False)
    advance(driver, clock, 6.0)
    assert backend.changes(Led.LINK) == []
    assert backend.state[Led.LINK] is False


def test_lamp_test_lights_everything_first() -> None:
    driver, backend, clock = make("rx", lamp_test=1.0)
    driver.update("DOWN", 0, 1, Fault.NONE)
    advance(driver, clock, 1.5)
    for led in Led:
        changes = backend.changes(led)
        assert changes[0] == (0.0, True)
    assert level(backend, Led.LINK, 1.2) is False
    assert level(backend, Led.FAULT, 1.2) is False


def test_backend_errors_never_reach_the_agent(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(SimulatedLedBackend):
        def set(self, led: Led, on: bool) -> None:
            raise OSError(5, "Input/output error")

    driver = LedDriver(Broken(), PROFILES["pi5"], "tx", lamp_test=0.0)
    driver.update(None, 1, 1, Fault.NONE, sending=True)
    driver.step()
    driver.step()
    assert driver.failed and "Input/output error" in driver.failed
    assert sum("cannot set" in r.message for r in caplog.records) == 1


def test_close_darkens_all_but_a_kept_fault() -> None:
    driver, backend, clock = make("rx")
    driver.update("UP", 1, 1, Fault.FATAL)
    advance(driver, clock, 0.01)
    driver.close(keep_fault=True)
    assert backend.closed
    assert backend.state == {Led.POWER: False, Led.LINK: False, Led.CONN: False, Led.FAULT: True}


def test_driver_on_a_board_with_fewer_leds() -> None:
    profile = BoardProfile("two", "two LEDs", "gpiochip0", {"power": 5, "fault": 6})
    driver, backend, clock = make("rx", profile=profile)
    driver.update("UP", 1, 1, Fault.FATAL)
    driver.step()
    assert set(backend.state) == {Led.POWER, Led.FAULT}


def test_driver_runs_in_real_time() -> None:
    """The asyncio task applies a 2 Hz blink by itself and reacts to an update at once."""
    backend = SimulatedLedBackend()
    driver = LedDriver(backend, PROFILES["pi4"], "rx", lamp_test=0.0)

    async def main() -> None:
        driver.update("DEGRADED", 1, 1, Fault.NONE)
        task = asyncio.create_task(driver.run())
        await asyncio.sleep(0.9)
        driver.update("UP", 1, 1, Fault.NONE)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    link = backend.changes(Led.LINK)
    ons = [on for _, on in link]
    assert ons[:4] == [True, False, True, False], link
    assert ons[-1] is True  # UP: steady on
    gaps = [b[0] - a[0] for a, b in zip(link[:4], link[1:4], strict=False)]
    assert all(0.15 < g < 0.6 for g in gaps), gaps  # loose: 0.25 s steps on a busy machine
    driver.close()
    assert not any(backend.state.values())


def test_recent_increase_blinks_while_trouble_lasts() -> None:
    recent = RecentIncrease(hold=10.0)
    assert not recent(0, 0.0)
    assert not recent(0, 5.0)
    assert recent(3, 6.0)       # grew
    assert recent(3, 15.9)      # still within 10 s of growing
    assert not recent(3, 16.0)  # quiet for 10 s: fault over
    assert not recent(0, 17.0)  # a counter reset is not trouble


def test_a_lasting_condition_holds_the_fault() -> None:
    """A spool on a full disk keeps the FAULT LED on while it lasts, counters quiet or not."""
    from agent.board.signals import BoardSignals
    from agent.config import BoardConfig
    board = BoardSignals("tx", BoardConfig(), {})
    assert board.fault({"dropped": 0}, 0.0) == Fault.NONE
    assert board.fault({"dropped": 0}, 100.0, active=True) == Fault.RECOVERABLE
    assert board.fault({"dropped": 0}, 200.0) == Fault.NONE


def test_show_fatal_lights_the_fault_led_and_leaves_it() -> None:
    backend = SimulatedLedBackend()
    assert show_fatal("tx", 0.05, backend=backend)
    assert backend.closed
    assert backend.state[Led.FAULT] is True
    assert backend.state[Led.POWER] is False
    assert backend.changes(Led.FAULT)[0][1] is True


def test_show_fatal_off_a_pi_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agent.board.profiles.detect_profile", lambda: None)
    assert not show_fatal("rx", 0.05)


# -- profiles --------------------------------------------------------------------------


def test_profiles_cover_pi4_and_pi5_with_chip_labels() -> None:
    assert PROFILES["pi4"].chip == "pinctrl-bcm2711"
    assert PROFILES["pi5"].chip == "pinctrl-rp1"
    for profile in PROFILES.values():
        assert set(profile.lines) == {led.value for led in Led}
        assert all(line in HEADER_PIN for line in profile.lines.values())


def test_get_profile_overrides_and_errors() -> None:
    p = get_profile("pi5", chip="/dev/gpiochip4", lines={"fault": 24}, active_low=True)
    assert p.chip == "/dev/gpiochip4" and p.lines["fault"] == 24 and p.lines["power"] == 17
    assert p.active_low
    assert get_profile("pi4") is PROFILES["pi4"]
    with pytest.raises(ValueError, match="unknown board profile 'pi9'.*pi4"):
        get_profile("pi9")
    with pytest.raises(ValueError, match="share a GPIO line"):
        get_profile("pi4", lines={"fault": 17})
    with pytest.raises(ValueError, match="unknown LED"):
        BoardProfile("x", "x", "gpiochip0", {"disco": 3})


@pytest.mark.parametrize(("model", "name"), [
    ("Raspberry Pi 5 Model B Rev 1.0\0", "pi5"),
    ("Raspberry Pi 500 Rev 1.0", "pi5"),
    ("Raspberry Pi Compute Module 5 Rev 1.0", "pi5"),
    ("Raspberry Pi 4 Model B Rev 1.5\0", "pi4"),
    ("Raspberry Pi 400 Rev 1.0", "pi4"),
    ("Raspberry Pi Compute Module 4 Rev 1.0", "pi4"),
    ("Raspberry Pi 3 Model B Plus Rev 1.3", "pi3"),
    ("Raspberry Pi Zero 2 W Rev 1.0", "pi3"),
    ("Raspberry Pi Model B Rev 2", None),
    ("QEMU Virtual Machine", None),
])
def test_profile_for_model(model: str, name: str | None) -> None:
    assert profile_for_model(model) == name


def test_detect_profile(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\0")
    assert detect_profile(model) is PROFILES["pi5"]
    assert detect_profile(tmp_path / "missing") is None


def test_leds_md_matches_the_profiles() -> None:
    """The technician's table names the pins the code drives."""
    text = (REPO / "board" / "LEDS.md").read_text()
    for led, line in PROFILES["pi4"].lines.items():
        row = next(r for r in text.splitlines() if r.startswith(f"| **{led.upper()}**"))
        assert f"pin {HEADER_PIN[line]} (GPIO{line})" in row, row
    assert PROFILES["pi5"].lines == PROFILES["pi4"].lines


# -- chip resolution and the gpiod backend ----------------------------------------------


def test_resolve_chip_by_path_name_and_label() -> None:
    labels = {"/dev/gpiochip0": "pinctrl-rp1", "/dev/gpiochip10": "gpio-brcmstb@107d508500"}
    assert resolve_chip("/dev/gpiochip4", devices=[], label_of=labels.__getitem__) == "/dev/gpiochip4"
    assert resolve_chip("gpiochip4", devices=[], label_of=labels.__getitem__) == "/dev/gpiochip4"
    assert resolve_chip("pinctrl-rp1", devices=list(labels), label_of=labels.__getitem__) == "/dev/gpiochip0"
    # an older Pi 5 kernel: the header is gpiochip4
    old = {f"/dev/gpiochip{i}": f"gpio-brcmstb@{i}" for i in range(4)} | {"/dev/gpiochip4": "pinctrl-rp1"}
    assert resolve_chip("pinctrl-rp1", devices=list(old), label_of=old.__getitem__) == "/dev/gpiochip4"
    with pytest.raises(LedError, match=r"no GPIO chip labelled 'pinctrl-bcm2711'.*gpiochip0 \[pinctrl-rp1\]"):
        resolve_chip("pinctrl-bcm2711", devices=list(labels), label_of=labels.__getitem__)


class FakeRequest:
    def __init__(self) -> None:
        self.values: dict[int, Any] = {}
        self.released = False

    def set_value(self, offset: int, value: Any) -> None:
        self.values[offset] = value

    def set_values(self, values: dict[int, Any]) -> None:
        self.values.update(values)

    def release(self) -> None:
        self.released = True


@pytest.fixture
def fake_gpiod(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.SimpleNamespace]:
    """A stand-in for PyPI gpiod 2.x: the calls GpiodLedBackend makes, recorded."""
    import enum

    rec = types.SimpleNamespace(calls=[], request=FakeRequest(), error=None)
    mod = types.ModuleType("gpiod")
    line = types.ModuleType("gpiod.line")

    class Direction(enum.Enum):
        AS_IS, INPUT, OUTPUT = 1, 2, 3

    class Value(enum.Enum):
        INACTIVE, ACTIVE = 0, 1

    class LineSettings:
        def __init__(self, **kwargs: Any) -> None:
            self.kwargs = kwargs

    def request_lines(path: str, config: dict[Any, Any], consumer: str | None = None) -> FakeRequest:
        if rec.error is not None:
            raise rec.error
        rec.calls.append((path, config, consumer))
        return rec.request

    line.Direction, line.Value = Direction, Value  # type: ignore[attr-defined]
    mod.line, mod.LineSettings, mod.request_lines = line, LineSettings, request_lines  # type: ignore[attr-defined]
    rec.Value = Value
    monkeypatch.setitem(sys.modules, "gpiod", mod)
    monkeypatch.setitem(sys.modules, "gpiod.line", line)
    yield rec


def test_gpiod_backend_requests_all_lines_as_outputs(fake_gpiod: types.SimpleNamespace) -> None:
    profile = get_profile("pi5", chip="/dev/gpiochip0", active_low=True)
    backend = GpiodLedBackend(profile)
    [(path, config, consumer)] = fake_gpiod.calls
    assert path == "/dev/gpiochip0" and consumer == "diode"
    [(offsets, settings)] = config.items()
    assert offsets == (17, 27, 22, 23)
    assert settings.kwargs["direction"].name == "OUTPUT"
    assert settings.kwargs["active_low"] is True
    assert settings.kwargs["output_value"].name == "INACTIVE"
    backend.set(Led.LINK, True)
    backend.set(Led.FAULT, False)
    assert fake_gpiod.request.values == {27: fake_gpiod.Value.ACTIVE, 23: fake_gpiod.Value.INACTIVE}
    backend.close()
    backend.close()
    assert fake_gpiod.request.released


def test_gpiod_backend_names_the_fix(fake_gpiod: types.SimpleNamespace) -> None:
    profile = get_profile("pi4", chip="/dev/gpiochip0")
    fake_gpiod.error = PermissionError(13, "Permission denied")
    with pytest.raises(LedError, match="gpio"):
        GpiodLedBackend(profile)
    fake_gpiod.error = OSError(16, "Device or resource busy")
    with pytest.raises(LedError, match=r"power=GPIO17.*busy"):
        GpiodLedBackend(profile)


def test_gpiod_v1_api_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    v1 = types.ModuleType("gpiod")
    v1.Chip = object  # type: ignore[attr-defined]  # v1 has Chip(...).get_line(), no request_lines
    monkeypatch.setitem(sys.modules, "gpiod", v1)
    with pytest.raises(LedError, match="v1 API.*gpiod>=2"):
        leds.open_backend("gpiod", get_profile("pi4", chip="/dev/gpiochip0"))


def test_gpiod_missing_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gpiod", None)
    with pytest.raises(LedError, match=r"pip install 'gpiod>=2'"):
        leds.open_backend("gpiod", PROFILES["pi4"])
    with pytest.raises(LedError, match="unknown LED backend"):
        leds.open_backend("blinkenlights", PROFILES["pi4"])


def test_real_gpiod_has_the_api_we_call() -> None:
    """When PyPI gpiod 2.x is installed, the names the backend uses exist with these meanings."""
    import gpiod  # the dev extras install it: a missing one must fail, not skip
    assert hasattr(gpiod, "request_lines"), "gpiod v1 API installed; the agents need 2.x"
    from gpiod.line import Direction, Value
    assert Value.ACTIVE.value == 1 and Value.INACTIVE.value == 0 and Direction.OUTPUT
    params = gpiod.LineSettings.__init__.__code__.co_varnames
    assert {"direction", "active_low", "output_value"} <= set(params)
    for name in ("set_value", "set_values", "release"):
        assert hasattr(gpiod.LineRequest, name)
    assert re.match(r"2\.", gpiod.__version__)
