"""The spool key: 32 bytes from a key file (mode 0600) or a systemd credential.

It is a separate key from the link key: the link key is shared by both boards,
the spool key never leaves the board whose spool it protects, and destroying it
(`wipe`) makes whatever remains on a flash card unreadable. Same file format as
the link key (64 hex digits on one line, written by `diode keygen`); a
credential may also hold the 32 raw bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.errors import ConfigError
from agent.keys import read_secret, require_private, write_key
from agent.link.seal import KEY_SIZE

__all__ = ["load_spool_key", "spool_key_path", "write_spool_key"]


def spool_key_path(source: str | Path) -> Path:
    """Where `source` points: a path (anything with a '/', or a Path), else a credential
    name in $CREDENTIALS_DIRECTORY (systemd LoadCredential=) if present there, else a
    file of that name in the working directory."""
    if isinstance(source, Path) or "/" in source:
        return Path(source)
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and (Path(creds) / source).exists():
        return Path(creds) / source
    return Path(source)


def load_spool_key(source: str | Path) -> bytes:
    """Read the spool key; refuse a missing, malformed or world-readable one, naming the fix."""
    path = spool_key_path(source)
    where = ""
    if isinstance(source, str) and "/" not in source and not path.exists():
        where = (f"there is no credential {source!r} in $CREDENTIALS_DIRECTORY="
                 f"{os.environ.get('CREDENTIALS_DIRECTORY', '(unset)')} either; ")
    raw, st = read_secret(path, "spool key", f"{where}create one with `diode keygen -o {path}` "
                          "on this board (it stays on this board)")
    require_private(path, st, "spool key")
    if len(raw) == KEY_SIZE and not _is_hex(raw):
        return raw
    try:
        key = bytes.fromhex(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != KEY_SIZE:
        raise ConfigError(f"{path}: not a spool key (expected {KEY_SIZE * 2} hex digits). "
                          f"Fix: create one with `diode keygen -o {path}`")
    return key


def write_spool_key(path: Path, force: bool = False) -> bytes:
    """A new random spool key in `path` (mode 0600); the link key's format."""
    return write_key(path, force=force)


def _is_hex(raw: bytes) -> bool:
    try:
        bytes.fromhex(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return False
    return True
