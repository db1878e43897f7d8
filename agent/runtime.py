"""What both agents share: signals, fatal errors from other threads, the status file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.errors import EXIT_FATAL, EXIT_OK

log = logging.getLogger("diode")



class Runtime:
    """Owns the stop event; any thread may call `fail` to stop with a fatal error."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        self.fatal: str | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: int) -> None:
        log.info("received %s; shutting down", signal.Signals(sig).name)
        self.stop.set()

    def fail(self, message: str) -> None:
        """Thread-safe: record the first fatal error and stop."""
        def _set() -> None:
            if self.fatal is None:
                self.fatal = message
            self.stop.set()
        self.loop.call_soon_threadsafe(_set)

    @property
    def exit_code(self) -> int:
        return EXIT_FATAL if self.fatal else EXIT_OK


_status_failed_at = -1e9


def write_status(path: Path | None, status: dict[str, Any]) -> bool:
    """Atomically replace the status file that `diode status` reads. A failure (disk
    full, permissions changed) is logged at most once a minute and never raised: the
    agent's timers must go on whatever the status file does."""
    return True if path is None else _replace(path, json.dumps(status))


async def write_status_off_loop(path: Path | None, status: dict[str, Any]) -> bool:
    """`write_status`, the file written in a worker thread: replacing a file can wait on
    the disk (ext4 writes the new file's data before the rename: 0.27 s seen on a busy
    disk, longer on an SD card), and the event loop must not. The text is made here, so
    nothing changes under it."""
    if path is None:
        return True
    return await asyncio.to_thread(_replace, path, json.dumps(status))


def _replace(path: Path, text: str) -> bool:
    global _status_failed_at
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".status-")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
        return True
    except OSError as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        now = time.monotonic()
        if now - _status_failed_at >= 60:
            _status_failed_at = now
            log.error("cannot write the status file %s: %s. Fix: check the disk and the "
                      "permissions of its folder", path, exc.strerror or exc)
        return False
