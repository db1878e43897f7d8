"""Each channel's own spool folder under `[spool] dir`, opened on demand.

A folder per channel, so one channel's backlog never holds back or crowds out
another. The spool key is loaded once, and refused when it is the link key: the
link key is on both boards (and anyone who has one board has it), the spool key
must never leave the board whose disk it protects.
"""

from __future__ import annotations

import hmac
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import ConfigError
from agent.spool.keyfile import load_spool_key
from agent.spool.store import Spool

if TYPE_CHECKING:
    from agent.config import AgentConfig

log = logging.getLogger("diode.spool")


def channel_spools(cfg: AgentConfig, link_key: bytes) -> Callable[[str], Spool | None]:
    """`open(channel)`: that channel's Spool, or None without [spool]."""
    key: bytes | None = None

    def open_spool(channel: str) -> Spool | None:
        nonlocal key
        s = cfg.spool
        if s is None:
            return None
        if key is None:
            key = load_spool_key(s.key)
            if hmac.compare_digest(key, link_key):
                raise ConfigError(f"{cfg.path}: [spool] key_file: the spool key is the link "
                                  "key. Fix: make a key of its own for this board with `diode "
                                  "keygen -o spool.key`; it never leaves the board")
        directory = s.dir / channel
        _warn_if_no_room(directory, s.max_bytes)
        return Spool(directory, key, max_bytes=s.max_bytes,
                     fsync=s.fsync,  # type: ignore[arg-type]
                     fsync_interval_ms=s.fsync_interval_ms)
    return open_spool


def _warn_if_no_room(directory: Path, max_bytes: int) -> None:
    """A spool allowed more than the disk has meets a full disk before its own bound."""
    where = directory
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return
    if max_bytes > free:
        log.warning("spool %s may grow to %d MB (max_bytes) but only %d MB are free on its "
                    "file system: when the disk fills, the oldest messages are dropped (and "
                    "counted). Fix: lower [spool] max_bytes or free space", directory,
                    max_bytes >> 20, free >> 20)
