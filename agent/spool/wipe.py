"""Decommissioning: overwrite and delete a spool, and destroy its key.

Overwriting is belt and braces. On flash (SD cards, eMMC, SSDs) the controller
remaps blocks, so old ciphertext can survive an overwrite; what makes it
unreadable is that the key is gone. Hence the key file is destroyed too, and a
spool whose key came from a systemd credential should have that credential
removed from the unit and the credential store as well.

Only files the spool writes are touched (segments, state, lock, the reserve,
leftovers, ``damaged/``), so a mistyped directory is refused rather than shredded.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from agent.spool.model import SpoolError
from agent.spool.recover import DAMAGED_DIR
from agent.spool.segment import parse_segment_name
from agent.spool.state import STATE_NAME
from agent.spool.store import LOCK_NAME, RESERVE_NAME, _lock

_CHUNK = 1 << 20


def _is_spool_file(name: str) -> bool:
    base = name[:-4] if name.endswith(".tmp") else name
    return base in (STATE_NAME, LOCK_NAME, RESERVE_NAME) or parse_segment_name(base) is not None


def shred(path: Path) -> None:
    """Overwrite a file with random bytes, fsync, unlink."""
    fd = os.open(path, os.O_WRONLY)
    try:
        remaining = os.fstat(fd).st_size
        while remaining > 0:
            remaining -= os.write(fd, secrets.token_bytes(min(remaining, _CHUNK)))
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink()


def wipe(directory: Path | str, key_path: Path | str | None) -> int:
    """Shred every spool file in `directory` and the key file; the number of files shredded.

    Refuses a directory that holds files the spool did not write, or a spool in use.
    """
    directory = Path(directory)
    if directory.exists():
        files = [p for p in directory.iterdir() if p.name != DAMAGED_DIR]
        strangers = [p.name for p in files if not (p.is_file() and _is_spool_file(p.name))]
        if strangers:
            raise SpoolError(f"{directory}: does not look like a spool directory (it holds "
                             f"{', '.join(sorted(strangers)[:5])}); refusing to wipe it. Fix: "
                             "check the path, or move those files away first")
        lock_fd = _lock(directory)
        count = 0
        try:
            damaged = directory / DAMAGED_DIR
            if damaged.is_dir():
                for p in damaged.iterdir():
                    shred(p)
                    count += 1
                damaged.rmdir()
            for p in files:
                if p.name != LOCK_NAME:
                    shred(p)
                    count += 1
            shred(directory / LOCK_NAME)
            count += 1
        finally:
            os.close(lock_fd)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    else:
        count = 0
    if key_path is not None:
        key_path = Path(key_path)
        with contextlib.suppress(FileNotFoundError):
            shred(key_path)
            count += 1
            dir_fd = os.open(key_path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    return count
