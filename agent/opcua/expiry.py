"""Warn well before an agent's own OPC UA certificate expires. Pure: times come in.

TX's client certificate and the mirror's server certificate are self-signed
(`diode opcua-cert`) and trusted by hand on the other side, so a renewal takes
someone's visit: the warning must come weeks ahead, not from the peer's refusal.

```
start ─► check ─► warn_days or fewer left: WARNING (ERROR once expired or not yet valid)
   └──── again every CHECK_EVERY (daily) ─┘        status(): expiry date and days left
```

Only a warning: nothing here refuses anything, since a Pi may start with its
clock far behind (docs/ARCHITECTURE.md, "Pi specifics") and the peer decides.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.opcua.certs import load_certificate, thumbprint_of

CHECK_EVERY = 86400.0  # seconds: daily
_DAY = 86400.0


@dataclass(frozen=True)
class Validity:
    path: Path
    thumbprint: str
    not_before: datetime
    not_after: datetime

    def days_left(self, now: datetime) -> float:
        return (self.not_after - now).total_seconds() / _DAY


def validity_of(path: Path) -> Validity:
    cert = load_certificate(path)
    return Validity(Path(path), thumbprint_of(cert), cert.not_valid_before_utc,
                    cert.not_valid_after_utc)


def _day(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d %H:%M UTC")


class ExpiryWatch:
    """One certificate of this agent: `whose` names it in the log ("TX's OPC UA client
    certificate for 'plant'"), `fix` says how to renew it."""

    def __init__(self, whose: str, path: Path, warn_days: float, fix: str,
                 log: logging.Logger) -> None:
        self.whose, self.warn_days, self.fix, self.log = whose, warn_days, fix, log
        self.validity: Validity | None = None
        self.error: str | None = None
        try:
            self.validity = validity_of(path)
        except (OSError, ValueError) as exc:
            self.error = f"cannot read {path}: {exc}"
        self._next = 0.0

    def message(self, now: datetime) -> tuple[int, str] | None:
        """(log level, line) when the certificate needs attention now, else None."""
        v = self.validity
        if v is None:
            return None
        ident = f"{self.whose} {v.path} (thumbprint {v.thumbprint})"
        if now < v.not_before:
            return logging.ERROR, (
                f"{ident} is valid only from {_day(v.not_before)}, but this board's clock says "
                f"{_day(now)}: peers with a right clock refuse it. Fix: set the clock (NTP), "
                "or make the certificate again once the clock is right")
        left = v.days_left(now)
        if left <= 0:
            return logging.ERROR, (f"{ident} expired on {_day(v.not_after)}: peers refuse it. "
                                   f"Fix: {self.fix}")
        if left <= self.warn_days:
            return logging.WARNING, (f"{ident} expires on {_day(v.not_after)}, in {left:.0f} "
                                     f"days. Fix: {self.fix}, before then")
        return None

    def tick(self, mono: float, now: datetime | None = None) -> None:
        """At start and once every CHECK_EVERY seconds: log what `message` says."""
        if mono < self._next:
            return
        self._next = mono + CHECK_EVERY
        found = self.message(now or datetime.now(UTC))
        if found is not None:
            self.log.log(*found)

    def status(self, now: datetime | None = None) -> dict[str, Any]:
        v = self.validity
        if v is None:
            return {"cert_error": self.error} if self.error else {}
        return {"cert_thumbprint": v.thumbprint,
                "cert_expires": v.not_after.isoformat(),
                "cert_days_left": int(v.days_left(now or datetime.now(UTC)))}
