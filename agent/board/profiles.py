"""Board profiles: which GPIO chip and lines drive the status LEDs. No I/O except `detect_profile`.

Every Raspberry Pi from the 3 on has the same 40-pin header, and the header's
GPIO numbers are the line offsets on the chip that drives it. What moves is
the chip:

| profile | boards                        | header chip label  | its /dev node                          |
|---------|-------------------------------|--------------------|----------------------------------------|
| `pi3`   | Pi 3, Zero 2 W                | `pinctrl-bcm2835`  | /dev/gpiochip0                         |
| `pi4`   | Pi 4, Pi 400, CM4             | `pinctrl-bcm2711`  | /dev/gpiochip0                         |
| `pi5`   | Pi 5, Pi 500, CM5             | `pinctrl-rp1`      | /dev/gpiochip4 before kernel 6.6.45,   |
|         |                               |                    | /dev/gpiochip0 from 6.6.45 on          |

On the Pi 5 the header sits behind the RP1 south bridge. Kernels before
6.6.45 numbered the SoC's own four GPIO blocks first, so the header was
gpiochip4; raspberrypi/linux PR #6144 gave RP1 gpiochip0 through a DT alias
(and moved the SoC blocks to gpiochip10 and up, so code that still opens
gpiochip4 fails instead of toggling the wrong pins). Rather than guess the
number from the kernel version, a profile names the chip by its *label* and
the gpiod backend opens whichever /dev/gpiochipN carries that label. The
chip stays configurable: a path (`/dev/gpiochip4`), a name (`gpiochip0`) or
another label overrides the profile's.

The LEDs sit on GPIO 17, 27, 22 and 23 (header pins 11, 13, 15, 16; ground on
pin 9, 14 or 20), chosen because none of them is claimed by the UART (14/15,
which the serial transport needs), I2C (2/3), SPI0 (7-11), PCM (18-21) or the
1-wire default (4). Wire each LED anode through a 330 ohm resistor to its pin
and its cathode to ground (active high); set `active_low` for a board whose
LEDs are wired to 3V3 instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

# The LED names (agent.board.leds.Led is a StrEnum of exactly these, so either keys a pin map).
LED_NAMES = ("power", "link", "conn", "fault")

# BCM GPIO number -> physical header pin, for the technician's table.
HEADER_PIN = MappingProxyType({17: 11, 27: 13, 22: 15, 23: 16})

_DEFAULT_LINES: Mapping[str, int] = MappingProxyType(
    {"power": 17, "link": 27, "conn": 22, "fault": 23})

MODEL_FILE = Path("/sys/firmware/devicetree/base/model")


@dataclass(frozen=True)
class BoardProfile:
    """A board's LED wiring: the GPIO chip (label, name or path) and one line offset per LED."""

    name: str
    description: str
    chip: str
    lines: Mapping[str, int] = field(default_factory=lambda: dict(_DEFAULT_LINES))
    active_low: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.lines) - set(LED_NAMES)
        if unknown:
            raise ValueError(f"board profile {self.name!r}: unknown LED(s) {sorted(unknown)}; "
                             f"LEDs are {', '.join(LED_NAMES)}")
        offsets = list(self.lines.values())
        if len(set(offsets)) != len(offsets):
            raise ValueError(f"board profile {self.name!r}: two LEDs share a GPIO line: {dict(self.lines)}")
        if any(o < 0 for o in offsets):
            raise ValueError(f"board profile {self.name!r}: negative line offset in {dict(self.lines)}")
        object.__setattr__(self, "lines", MappingProxyType(dict(self.lines)))


PROFILES: Mapping[str, BoardProfile] = MappingProxyType({
    "pi3": BoardProfile("pi3", "Raspberry Pi 3 / Zero 2 W", "pinctrl-bcm2835"),
    "pi4": BoardProfile("pi4", "Raspberry Pi 4 / 400 / CM4", "pinctrl-bcm2711"),
    "pi5": BoardProfile("pi5", "Raspberry Pi 5 / 500 / CM5 (header on RP1)", "pinctrl-rp1"),
})


def get_profile(name: str, *, chip: str | None = None, lines: Mapping[str, int] | None = None,
                active_low: bool | None = None) -> BoardProfile:
    """A named profile, with the chip, line offsets or polarity overridden where given.

    `name = "auto"` reads the board model from the device tree. Raises
    ValueError naming the fix, since a typo here is a configuration error.
    """
    if name == "auto":
        detected = detect_profile()
        if detected is None:
            raise ValueError(f"board profile 'auto': cannot tell the board from {MODEL_FILE}. "
                             f"Fix: set the profile to one of {', '.join(PROFILES)}")
        profile = detected
    else:
        try:
            profile = PROFILES[name]
        except KeyError:
            raise ValueError(f"unknown board profile {name!r}. Fix: use one of "
                             f"{', '.join(PROFILES)} or 'auto'") from None
    changes: dict[str, object] = {}
    if chip is not None:
        changes["chip"] = chip
    if lines is not None:
        changes["lines"] = {**profile.lines, **lines}
    if active_low is not None:
        changes["active_low"] = active_low
    return replace(profile, **changes) if changes else profile  # type: ignore[arg-type]


def profile_for_model(model: str) -> str | None:
    """The profile name for a device-tree model string, e.g. 'Raspberry Pi 5 Model B Rev 1.0'."""
    model = model.strip("\0 \n")
    rules = ((r"Raspberry Pi (5|500)\b|Compute Module 5", "pi5"),
             (r"Raspberry Pi (4|400)\b|Compute Module 4", "pi4"),
             (r"Raspberry Pi 3\b|Raspberry Pi Zero 2|Compute Module 3", "pi3"))
    for pattern, name in rules:
        if re.search(pattern, model):
            return name
    return None


def detect_profile(model_file: Path = MODEL_FILE) -> BoardProfile | None:
    """The profile for this board, from the device tree's model, or None off a Pi.

    Reads /sys/firmware/devicetree/base/model rather than /proc/device-tree
    (a symlink to it) or /proc/cpuinfo, so it also works under systemd's
    ProcSubset=pid.
    """
    try:
        model = model_file.read_bytes().decode("ascii", "replace")
    except OSError:
        return None
    name = profile_for_model(model)
    return None if name is None else PROFILES[name]
