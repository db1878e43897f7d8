"""Reading one TOML table: typed keys, bounds, defaults, and errors that name the
file, the key and the fix; unknown keys are errors with a did-you-mean.

Shared by the agent's own sections (agent/config.py) and every protocol's
channel tables, so each adapter reads its config the same way.
"""

from __future__ import annotations

import difflib
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from types import UnionType
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from agent.errors import ConfigError
from agent.keys import read_secret

T = TypeVar("T")
D = TypeVar("D")
REQUIRED: Any = object()




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

    def get(self, key: str, typ: type[T], default: Any = REQUIRED, *, example: str = "",
            lo: float | None = None, hi: float | None = None,
            choices: tuple[Any, ...] = ()) -> T:
        self.used.add(key)
        fix = f"{key} = {example}" if example else f"set {key}"
        if key not in self.data:
            if default is REQUIRED:
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

    def path_of(self, key: str, default: Any = REQUIRED, example: str = "") -> Path | None:
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
            at = f"[{self.where}] password_file" if self.where else "password_file"
            try:
                raw, _ = read_secret(password_file, "password file",
                                     "point password_file at a file holding the password")
            except ConfigError as exc:
                raise ConfigError(f"{self.path}: {at}: {exc}") from None
            try:
                password = raw.decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                self.fail("password_file", f"{password_file} is not UTF-8 text (byte "
                          f"{exc.start})", "save the password as UTF-8 text")
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


# -- declared settings ----------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """How one config dataclass field is read from TOML and documented."""
    doc: str
    example: str
    lo: float | None = None
    hi: float | None = None
    lo_field: str | None = None   # the lower bound is this other field's value
    choices: tuple[Any, ...] = ()
    toml: str | None = None       # the TOML key, when it is not the field's name
    default_doc: str | None = None  # the default as the docs say it, when computed
    manual: bool = False          # read by its section's own code, documented here
    label: str | None = None      # the key column in the docs, when not just the key


def setting(default: Any = REQUIRED, *, doc: str, example: str, secret: bool = False,
            **kw: Any) -> Any:
    """A dataclass field declared once: its default, bounds, example and doc line.
    A `secret` is left out of the dataclass's repr (and so of every log line)."""
    meta = {"setting": Setting(doc, example, **kw)}
    if default is REQUIRED:
        return field(metadata=meta, repr=not secret)
    return field(default=default, metadata=meta, repr=not secret)


def declared(cls: type) -> list[tuple[str, Any, Setting, Any]]:
    """(field name, type, setting, default or REQUIRED) of every declared field."""
    hints = get_type_hints(cls)
    out = []
    for f in fields(cls):
        s = f.metadata.get("setting")
        if s is not None:
            out.append((f.name, hints[f.name], s,
                        REQUIRED if f.default is MISSING else f.default))
    return out


def read(t: Table, cls: type[D], computed: dict[str, Any] | None = None, **given: Any) -> D:
    """Build `cls` from table `t`: each declared field read with its type, bounds and
    default (`computed` replaces defaults that depend on other values); fields in
    `given` are taken as they are."""
    values: dict[str, Any] = dict(given)
    for name, typ, s, default in declared(cls):
        if name in given or s.manual:
            continue
        if computed and name in computed:
            default = computed[name]
        key = s.toml or name
        base = _base(typ)
        lo = values[s.lo_field] if s.lo_field else s.lo
        if base is Path:
            values[name] = t.path_of(key, default, s.example)
        elif base is tuple:
            raw = t.get(key, list, list(default) if default is not REQUIRED else REQUIRED,
                        example=s.example)
            if not raw or not all(isinstance(x, str) and x for x in raw):
                t.fail(key, "expected a non-empty list of strings", f"{key} = {s.example}")
            values[name] = tuple(raw)
        else:
            values[name] = t.get(key, base, default, example=s.example, lo=lo, hi=s.hi,
                                 choices=s.choices)
    return cls(**values)


def _base(typ: Any) -> Any:
    """int from `int | None`, tuple from `tuple[str, ...]`."""
    args = [a for a in get_args(typ) if a is not type(None)]
    if get_origin(typ) in (Union, UnionType) and len(args) == 1:
        typ = args[0]
    origin = get_origin(typ)
    return origin if origin is not None else typ


def markdown_rows(cls: type, prefix: str = "") -> list[str]:
    """The README's table rows for `cls`: key, default, meaning."""
    rows = []
    for name, _typ, s, default in declared(cls):
        if s.default_doc is not None:
            shown = s.default_doc
        elif default is REQUIRED:
            shown = "required"
        elif default is None:
            shown = "unset"
        else:
            shown = f"`{_toml(default)}`"
        rows.append(f"| {prefix}{s.label or f'`{s.toml or name}`'} | {shown} | {s.doc} |")
    return rows


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, tuple):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return str(v)
