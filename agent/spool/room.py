"""How much room its disk leaves a spool: the reserve file, the bound in force, and
full-disk episodes. The store (store.py) decides what to drop; this says how much.

```
a write fails (ENOSPC, EDQUOT) ─► note(): an episode starts (logged once, with the fix)
                                  release(): the reserve file goes: room for state files
                                  lower(): the bound becomes what the disk holds now
the store drops its oldest down to the bound, then make(): the reserve again
once a second, while bounded (due) ─► review(): the bound rises as space returns, the
                                       reserve is remade, the episode ends (logged once)
```

The reserve file (`reserve`, RESERVE_BYTES, outside max_bytes) is what lets a drop
happen on a full disk at all: a drop writes a state file before it unlinks, and a
state file needs a block. Below max_bytes the bound comes with segments sized to it
(an eighth), so a small disk still drops a little at a time. Free space is
statvfs's: for root what root may use (where its ENOSPC comes), else what others
may. A quota (EDQUOT) is not in statvfs: a spool under one learns its bound by
meeting it.
"""

from __future__ import annotations

import errno
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

RESERVE_NAME = "reserve"
RESERVE_BYTES = 64 << 10       # room for state files on a full disk; outside max_bytes
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
MARGIN = 16 << 10              # free space left beyond a pending write and the reserve
_MIN_RESERVE = 16 << 10
_MIN_SEGMENT = 4 << 10         # segments shrink to fit a small disk, not below this
_CHECK_S = 1.0                 # free-space checks while the disk bounds the spool
log = logging.getLogger("diode.spool")


class Room:
    def __init__(self, directory: Path, dir_fd: int, *, max_bytes: int, segment_bytes: int,
                 reserve_bytes: int, clock: Callable[[], float],
                 counters: dict[str, int]) -> None:
        self.directory = directory
        self.max_bytes, self.segment_bytes, self.reserve_bytes = (max_bytes, segment_bytes,
                                                                  reserve_bytes)
        self.limit = max_bytes          # the bound in force
        self.segment = segment_bytes    # the segment size in force
        self.full = False               # in a full-disk episode
        self._dir_fd = dir_fd
        self._clock = clock
        self._counters = counters
        self._block = 4096
        self._episode_drops = 0
        self._checked_at = -math.inf
        try:
            self.reserve = (directory / RESERVE_NAME).stat().st_size   # bytes it holds
        except FileNotFoundError:
            self.reserve = 0

    @property
    def reserve_owed(self) -> bool:
        return self.reserve < self.reserve_bytes

    def free(self) -> int | None:
        try:
            st = os.fstatvfs(self._dir_fd)
        except OSError:
            return None
        self._block = st.f_frsize or st.f_bsize or 4096
        return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * self._block

    def make(self) -> None:
        """The reserve file at its size if that fits, else the most that does (>= 16 KiB)."""
        if self.reserve >= self.reserve_bytes:
            return
        path = self.directory / RESERVE_NAME
        size = self.reserve_bytes
        try:
            while size >= min(_MIN_RESERVE, self.reserve_bytes):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
                try:
                    os.posix_fallocate(fd, 0, size)
                    self.reserve = size
                    return
                except OSError as exc:
                    if exc.errno not in FULL_ERRNOS:
                        raise
                    os.ftruncate(fd, self.reserve)
                finally:
                    os.close(fd)
                size //= 2
        except OSError as exc:
            if exc.errno in FULL_ERRNOS:
                return
            log.warning("%s: cannot make the spool's reserve file (%s); on a full disk a drop "
                        "then needs room for the state file", self.directory, exc)
            self.reserve_bytes = 0

    def release(self) -> bool:
        """Unlink the reserve file; False when there was none to release."""
        if not self.reserve:
            return False
        (self.directory / RESERVE_NAME).unlink(missing_ok=True)
        self.reserve = 0
        return True

    def note(self, exc: OSError, fill: int) -> None:
        """A write met a full disk; the first in an episode is logged with the fix."""
        c = self._counters
        c["full_errors"] += 1
        if self.full:
            return
        self.full = True
        c["disk_full_episodes"] += 1
        self._episode_drops = c["dropped_oldest"] + c["dropped_full"]
        self._checked_at = self._clock()     # no "room again" before the first drops land
        log.warning("%s: its file system is full (%s) at %.1f MB of spool: dropping the "
                    "oldest records to make room (counted in dropped_oldest), and keeping the "
                    "spool below what the disk holds until space returns. Fix: free space on "
                    "that file system, or lower [spool] max_bytes (%.1f MB for each channel)",
                    self.directory, exc.strerror or exc, fill / 1e6, self.max_bytes / 1e6)

    def lower(self, on_disk: int, files: int) -> int | None:
        """Bound the spool by what the disk holds now (after a full-disk error); free bytes."""
        free = self.free()
        if free is not None:
            self.set_limit(min(self.limit, self._bound(on_disk, files, free)))
        return free

    def due(self, busy: bool) -> bool:
        """Whether to review now: while bounded below max_bytes, in an episode, without the
        whole reserve, or `busy` (a drop waiting in memory); at most once per _CHECK_S."""
        if not (busy or self.full or self.limit < self.max_bytes or self.reserve_owed):
            return False
        now = self._clock()
        if now < self._checked_at + _CHECK_S:
            return False
        self._checked_at = now
        return True

    def review(self, on_disk: int, files: int, *, at_open: bool = False,
               stuck: bool = False) -> None:
        """Remake the reserve if there is room, raise the bound as space returns (at open:
        set it, lower too, so segments are sized to the disk from the first append), and
        end the episode once the disk has room again."""
        free = self.free()
        if free is None:
            return
        if self.reserve_owed and free >= self.reserve_bytes + MARGIN:
            self.make()
            free = self.free() or 0
        bound = self._bound(on_disk, files, free)
        if at_open or bound > self.limit:
            self.set_limit(bound)
        if self.full and not stuck and free >= MARGIN and (self.reserve or not self.reserve_bytes):
            self.full = False
            c = self._counters
            dropped = c["dropped_oldest"] + c["dropped_full"] - self._episode_drops
            log.warning("%s: room on its file system again; %d records were dropped while it "
                        "was full. The spool is bounded at %.1f MB%s", self.directory, dropped,
                        self.limit / 1e6, "" if self.limit >= self.max_bytes else
                        f" by the disk (max_bytes {self.max_bytes / 1e6:.1f} MB)")

    def set_limit(self, limit: int) -> None:
        self.limit = min(self.max_bytes, max(0, limit))
        self.segment = (self.segment_bytes if self.limit >= self.max_bytes else
                        min(self.segment_bytes, max(_MIN_SEGMENT, self.limit // 8)))

    def _bound(self, on_disk: int, files: int, free: int) -> int:
        """What the spool has on disk plus what is free, less the reserve still to be made,
        half a segment, and a block per file of slack."""
        capacity = on_disk + free - max(0, self.reserve_bytes - self.reserve)
        seg = min(self.segment_bytes, max(_MIN_SEGMENT, capacity // 8))
        return max(0, capacity - seg // 2 - (files + 4) * self._block)
