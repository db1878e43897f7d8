"""Link key files: 32 random bytes, hex on one line, mode 0600.

Under systemd with `LoadCredential=link.key:...`, the credential copy (in
$CREDENTIALS_DIRECTORY, private to the service) is preferred: the boot
partition is FAT, where every file reads as world-readable.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from agent.errors import ConfigError
from agent.link.seal import KEY_SIZE


def write_key(path: Path, force: bool = False) -> bytes:
    key = secrets.token_bytes(KEY_SIZE)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(key.hex() + "\n")
    return key


def require_private(path: Path, st: os.stat_result, what: str) -> None:
    """Refuse a secret that group or others can read, naming the fix."""
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path}: {what} is readable by others (mode "
                          f"{stat.S_IMODE(st.st_mode):04o}). Fix: chmod 600 {path}")


MAX_SECRET_FILE = 4096  # a key or a password; anything larger is not one


def read_secret(path: Path, what: str, fix: str) -> tuple[bytes, os.stat_result]:
    """The bytes of a small regular file, and its stat. A missing, unreadable, special
    (/dev/zero) or oversized file is a ConfigError naming the file and `fix`."""
    try:
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"{path}: {what} is not a regular file. Fix: {fix}")
            data = f.read(MAX_SECRET_FILE + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found. Fix: {fix}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: {what} is a folder. Fix: {fix}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror}. Fix: {fix}") from None
    if len(data) > MAX_SECRET_FILE:
        raise ConfigError(f"{path}: {what} is larger than {MAX_SECRET_FILE} bytes, so not one. "
                          f"Fix: {fix}")
    return data, st


def read_key(path: Path) -> bytes:
    """Read a key file; refuse one that others can read, naming the fix."""
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials and (Path(credentials) / path.name).is_file():
        path = Path(credentials) / path.name
    raw, st = read_secret(path, "key file", f"create it with `diode keygen -o {path}` and copy "
                          "it to both boards")
    require_private(path, st, "key file")
    try:
        key = bytes.fromhex(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != KEY_SIZE:
        raise ConfigError(f"{path}: not a link key (expected {KEY_SIZE * 2} hex digits). "
                          f"Fix: create one with `diode keygen -o {path}`")
    return key
