"""Each channel's own spool folder under `[spool] dir`, opened on demand.

A folder per channel, so one channel's backlog never holds back or crowds out
another. The spool key is loaded once, and refused when it is the link key: the
link key is on both boards (and anyone who has one board has it), the spool key
must never leave the board whose disk it protects.

The agent asks `ChannelSpools` whether any of its spools is on a full disk (the
FAULT LED), and, once every channel is open, checks that the spools sharing a
file system can grow to their bounds together (`warn_if_no_room`).
"""

from __future__ import annotations

import hmac
import logging
import os
from typing import TYPE_CHECKING

from agent.errors import ConfigError
from agent.spool.keyfile import load_spool_key
from agent.spool.segment import BODY_OVERHEAD, HEADER_SIZE, TRAILER_SIZE
from agent.spool.store import Spool

if TYPE_CHECKING:
    from agent.config import AgentConfig

log = logging.getLogger("diode.spool")


def segment_bytes(max_bytes: int, largest_record: int) -> int:
    """The Spool's own default segment size, raised so that a record of
    `largest_record` bytes (payload and key) fits one segment."""
    default = min(max(max_bytes // 16, 64 << 10), 8 << 20)
    return max(default, largest_record + HEADER_SIZE + TRAILER_SIZE + BODY_OVERHEAD)


class ChannelSpools:
    """`spools(channel, largest_record=0)`: that channel's Spool, or None without [spool].
    Its segments hold a record of `largest_record` bytes (the channel's largest message
    with its topic and fields), so no record the channel accepts is refused by the spool."""

    def __init__(self, cfg: AgentConfig, link_key: bytes) -> None:
        self.cfg = cfg
        self._link_key = link_key
        self._key: bytes | None = None
        self.opened: dict[str, Spool] = {}

    def __call__(self, channel: str, largest_record: int = 0) -> Spool | None:
        s = self.cfg.spool
        if s is None:
            return None
        if self._key is None:
            key = load_spool_key(s.key)
            if hmac.compare_digest(key, self._link_key):
                raise ConfigError(f"{self.cfg.path}: [spool] key_file: the spool key is the link "
                                  "key. Fix: make a key of its own for this board with `diode "
                                  "keygen -o spool.key`; it never leaves the board")
            self._key = key
        segment = segment_bytes(s.max_bytes, largest_record)
        if s.max_bytes < 4 * segment:
            raise ConfigError(
                f"{self.cfg.path}: [spool] max_bytes: {s.max_bytes} bytes is too small for "
                f"channel '{channel}', whose messages may take {largest_record} bytes (its "
                f"max_message_size and topic): the spool needs room for 4 segments of "
                f"{segment} bytes. Fix: set [spool] max_bytes to at least {4 * segment}, or "
                f"lower that channel's max_message_size")
        spool = Spool(s.dir / channel, self._key, max_bytes=s.max_bytes, segment_bytes=segment,
                      fsync=s.fsync,  # type: ignore[arg-type]
                      fsync_interval_ms=s.fsync_interval_ms)
        self.opened[channel] = spool
        return spool

    def disk_full(self) -> bool:
        """Some spool is on a full disk now (dropping, or refusing, for room)."""
        return any(sp.disk_full for sp in self.opened.values())

    def warn_if_no_room(self) -> None:
        """Spools allowed more, together, than their file system has free meet a full disk
        before their own bounds: say so once per file system, with the figures."""
        by_fs: dict[int, list[Spool]] = {}
        for sp in self.opened.values():
            by_fs.setdefault(os.stat(sp.directory).st_dev, []).append(sp)
        for spools in by_fs.values():
            where = spools[0].directory.parent
            try:
                st = os.statvfs(where)
            except OSError:
                continue
            free = (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize
            # each may still grow to max_bytes; what it holds now is already off `free`
            held = sum(sp.stats().fill_bytes for sp in spools)
            growth = sum(max(0, sp.max_bytes - sp.stats().fill_bytes) for sp in spools)
            if growth <= free:
                continue
            names = ", ".join(sorted(sp.directory.name for sp in spools))
            log.warning("the spools of %d channel(s) under %s (%s) may grow by %.1f MB in all "
                        "([spool] max_bytes %.1f MB each) but only %.1f MB are free on that "
                        "file system: when it fills, each drops its oldest messages (counted "
                        "in dropped_oldest) and stays below what the disk holds. Fix: lower "
                        "[spool] max_bytes to %.1f MB or less, or free space", len(spools),
                        where, names, growth / 1e6, spools[0].max_bytes / 1e6, free / 1e6,
                        (free + held) // len(spools) / 1e6)
