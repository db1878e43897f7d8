"""Reading one TOML table: typed keys, bounds, defaults, and errors that name the
file, the key and the fix; unknown keys are errors with a did-you-mean.

Shared by the agent's own sections (agent/config.py) and every protocol's
channel tables, so each adapter reads its config the same way.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import ConfigError

T = TypeVar("T")
_REQUIRED: Any = object()




class Table:
    """One TOML table being read: tracks used keys to report unknown ones."""

    def __init__(self, path: Path, where: str, data: Any) -> None:
        self.path, self.where = path, where
        if not isinstance(data, dict):
            self.fail("", f"expected a table, got {type(data).__name__}", f"write [{where}]")
        self.data: dict[str, Any] = data
        self.used: set[str] = set()

    def fail(self, key: str, problem: str, fix: str) -> None:
        at = f"[{self.where}] {key}".strip() if self.where else key
        raise ConfigError(f"{self.path}: {at}: {problem}. Fix: {fix}")

    def get(self, key: str, typ: type[T], default: Any = _REQUIRED, *, example: str = "",
            lo: float | None = None, hi: float | None = None,
            choices: tuple[Any, ...] = ()) -> T:
        self.used.add(key)
        fix = f"{key} = {example}" if example else f"set {key}"
        if key not in self.data:
            if default is _REQUIRED:
                self.fail(key, "missing", fix)
            return default
        value = self.data[key]
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            self.fail(key, f"expected {typ.__name__}, got {value!r}", fix)
        if choices and value not in choices:
            self.fail(key, f"must be one of {', '.join(map(repr, choices))}, got {value!r}", fix)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            self.fail(key, f"must be between {lo} and {hi}, got {value!r}", fix)
        return value

    def path_of(self, key: str, default: Any = _REQUIRED, example: str = "") -> Path | None:
        raw = self.get(key, str, default, example=example)
        if raw is None:
            return None
        p = Path(raw)
        return p if p.is_absolute() else (self.path.parent / p)

    def credentials(self, password_example: str) -> tuple[str | None, str | None]:
        """username, and password from `password` or `password_file` (not both)."""
        username = self.get("username", str, None, example='"diode"')
        password = self.get("password", str, None, example='"..."')
        password_file = self.path_of("password_file", None, example=password_example)
        if password_file is not None:
            if password is not None:
                self.fail("password_file", "both password and password_file are set",
                          "keep only one of them")
            try:
                password = password_file.read_text().strip()
            except OSError as exc:
                self.fail("password_file", f"cannot read {password_file}: {exc.strerror}",
                          "point it at a readable file")
        return username, password

    def table(self, key: str, required: bool = False) -> Table:
        self.used.add(key)
        if key not in self.data and required:
            self.fail(key, "missing table", f"add a [{self._sub(key)}] table")
        return Table(self.path, self._sub(key), self.data.get(key, {}))

    def tables(self, key: str) -> list[Table]:
        self.used.add(key)
        items = self.data.get(key, [])
        if not isinstance(items, list):
            self.fail(key, "expected an array of tables", f"write [[{self._sub(key)}]]")
        return [Table(self.path, f"{self._sub(key)}.{i}", item) for i, item in enumerate(items)]

    def _sub(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def done(self) -> None:
        for key in self.data:
            if key not in self.used:
                close = difflib.get_close_matches(key, sorted(self.used), n=1)
                hint = f"did you mean '{close[0]}'?" if close else "remove it"
                self.fail(key, "unknown key", hint)
