"""The project's errors and exit codes, in one place.

Two kinds of error, kept apart:

- Ours: a configuration that cannot work, a set-up that fails, a peer that
  refuses us. They derive from `DiodeError`, carry one line that names the
  cause and the fix, and stop an agent with `EXIT_FATAL`.
- Theirs: bad bytes from the wire or from a damaged file. They are never
  raised to a driver, because on a one-way link nobody could be told: the link
  receiver and the spool count them by reason and drop them.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_NOT_FOUND = 1   # a query found nothing to show (`diode status` with no agent running)
EXIT_FATAL = 2       # configuration, set-up or a refusal: the message says what to fix


class DiodeError(Exception):
    """Root of the project's own errors; the message is one line with the fix."""


class ConfigError(DiodeError):
    """A configuration file or a file it names is wrong: file, key and fix."""


class SpoolError(DiodeError):
    """The store-and-forward spool cannot be opened or used."""


class LinkSetupError(DiodeError):
    """The one-way link (socket, serial port, network interface) cannot be set up."""


class AdapterError(DiodeError):
    """A protocol adapter cannot go on: a peer refused us, or its set-up failed."""


class BoardError(DiodeError):
    """LED or watchdog trouble; logged, never allowed to stop the data."""
