"""A small tmpfs of a test's own, for full-disk tests: `mount -t tmpfs` (root).

A test that needs one fails, loudly, when it cannot be mounted: a full disk is
a condition the agents must survive, so its tests are never skipped.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "2m") -> Iterator[Path]:
    """`where` with a tmpfs of `size` mounted on it; unmounted afterwards."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                           str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a {size} tmpfs on {where} (uid {os.geteuid()}): "
                    f"{done.stderr.strip() or done.returncode}. These full-disk tests need root "
                    "(mount -t tmpfs); run them as root", pytrace=False)
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bfree * st.f_frsize


class Filler:
    """Another writer on the same file system: takes space, gives it back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.size = 0

    def take(self, n: int | None = None) -> int:
        """Write up to `n` bytes (all there is when None); the bytes written."""
        chunk = b"f" * 4096
        wrote = 0
        while n is None or wrote < n:
            try:
                k = os.write(self._fd, chunk if n is None else chunk[:min(4096, n - wrote)])
            except OSError:
                break
            if k == 0:
                break
            wrote += k
        self.size += wrote
        return wrote

    def give_back(self, n: int | None = None) -> None:
        """Free `n` bytes (everything when None)."""
        self.size = 0 if n is None else max(0, self.size - n)
        os.ftruncate(self._fd, self.size)

    def close(self) -> None:
        os.close(self._fd)
        self.path.unlink(missing_ok=True)
